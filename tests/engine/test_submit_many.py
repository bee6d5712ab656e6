"""Bulk submit: ``Client.submit_many`` and ``POST /flow/{name}/batch``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

import aioflow
from aioflow.engine.engine import register
from aioflow.gateway.routes import create_app
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.topology import RedisClient
from tests.engine_helpers import Stack, running

T = 10.0
PARTS = 4
HttpClient = TestClient[web.Request, web.Application]


def make_flow() -> aioflow.Flow:
    flow = aioflow.Flow("bulk", partitions=PARTS)

    @flow.node
    async def double(x: Any, ctx: aioflow.Context) -> Any:
        return {"x": x, "opts": ctx.options}

    return flow


async def run_keys(redis: RedisClient) -> set[str]:
    found: set[str] = set()
    for p in range(PARTS):
        members: Any = await redis.zrange(f"{keys.tag('bulk', p)}:i", 0, -1)
        found |= {k.decode() for k in members}
    return found


async def test_ids_come_back_in_input_order(any_redis_url: str) -> None:
    async with running([make_flow()], any_redis_url) as stack:
        inputs = list(range(50))
        ids = await stack.client.submit_many("bulk", inputs, options={"k": ["v"]})
        assert len(ids) == 50 and len(set(ids)) == 50
        for i, rid in zip(inputs, ids, strict=True):
            assert await stack.client.result(rid, timeout=T) == {"x": i, "opts": {"k": ["v"]}}


async def test_a_batch_spans_several_partitions(any_redis_url: str) -> None:
    async with running([make_flow()], any_redis_url) as stack:
        ids = await stack.client.submit_many("bulk", range(40))
        parts = {RunId.parse(r).partition for r in ids}
        assert parts == set(range(PARTS))
        for i, rid in enumerate(ids):
            assert (await stack.client.result(rid, timeout=T))["x"] == i


async def test_batch_runs_look_like_single_submits(redis_url: str) -> None:
    """submit_many.lua mirrors submit.lua: the same fields, the same stream messages."""
    async with running([make_flow()], redis_url) as stack:
        one = RunId.parse(await stack.client.submit("bulk", 7, run_id="single"))
        many = RunId.parse((await stack.client.submit_many("bulk", [7], run_ids=["multi"]))[0])
        for rid in (one, many):
            await stack.client.result(str(rid), timeout=T)
        h1, h2 = await stack.redis.hgetall(one.run), await stack.redis.hgetall(many.run)
        assert sorted(h1) == sorted(h2)
        assert h1[b"input"] == h2[b"input"] and h1[b"opts"] == h2[b"opts"]


async def test_caller_chosen_ids_are_deduplicated(any_redis_url: str) -> None:
    async with running([make_flow()], any_redis_url) as stack:
        first = await stack.client.submit("bulk", "old", run_id="a")
        ids = await stack.client.submit_many(
            "bulk", ["new-a", "b", "b-again", "fresh"], run_ids=["a", "b", "b", None]
        )
        assert ids[0] == first  # existed before: not started again
        assert ids[1] == ids[2] == str(await stack.client.engine.new_run_id("bulk", "b"))
        assert len({ids[0], ids[1], ids[3]}) == 3
        assert (await stack.client.result(ids[0], timeout=T))["x"] == "old"
        assert (await stack.client.result(ids[1], timeout=T))["x"] == "b"  # the first "b"
        await stack.client.result(ids[3], timeout=T)
        assert len(await run_keys(stack.redis)) == 3
        # the same batch again starts nothing new
        again = await stack.client.submit_many("bulk", [1, 2], run_ids=["a", "b"])
        assert again == [ids[0], ids[1]]
        assert len(await run_keys(stack.redis)) == 3


@pytest.mark.parametrize(
    ("inputs", "run_ids", "index"),
    [
        ([1, 2, object(), 4], None, 2),
        ([1, 2, 3], ["ok", "not ok!", None], 1),
        ([1, 2, 3], ["x" * 65, None, None], 0),
        ([1, 2, 3], ["a", "b"], None),
    ],
)
async def test_an_invalid_item_submits_nothing(
    redis_url: str, inputs: list[Any], run_ids: list[str | None] | None, index: int | None
) -> None:
    async with running([make_flow()], redis_url) as stack:
        with pytest.raises(aioflow.InvalidBatch) as err:
            await stack.client.submit_many("bulk", inputs, run_ids=run_ids)
        assert err.value.index == index
        if index is not None:
            assert f"item {index}" in str(err.value)
        assert await run_keys(stack.redis) == set()
        for p in range(PARTS):
            assert await stack.redis.xlen(keys.stream("bulk", p)) == 0


async def test_unknown_flow(redis_url: str) -> None:
    async with running([make_flow()], redis_url) as stack:
        with pytest.raises(aioflow.UnknownFlow):
            await stack.client.submit_many("nope", [1])


async def test_an_empty_batch(redis_url: str) -> None:
    async with running([make_flow()], redis_url) as stack:
        assert await stack.client.submit_many("bulk", []) == []


async def test_more_runs_than_one_script_call_takes(redis_url: str) -> None:
    flow = aioflow.Flow("bulk", partitions=1)

    @flow.node
    async def inc(x: int) -> int:
        return x + 1

    async with running([flow], redis_url) as stack:
        ids = await stack.client.submit_many("bulk", range(1200))
        results = [await stack.client.result(r, timeout=T) for r in ids]
        assert results == list(range(1, 1201))


async def test_redis_failing_mid_batch_says_what_exists(redis_url: str, redis: Redis) -> None:
    """One partition's call is refused (an ACL user without access to its keys): the other
    partitions' runs exist and are listed, the refused ones are named as unknown."""
    flow = make_flow()
    await register(redis, [flow])
    broken = 1
    allowed = [f"~af:{{bulk:{p}}}:*" for p in range(PARTS) if p != broken]
    await redis.acl_setuser(
        "bulk",
        enabled=True,
        passwords=["+pw"],
        keys=["af:flows", "af:fv*", *allowed],
        commands=["+@all"],
    )
    try:
        url = redis_url.replace("redis://", "redis://bulk:pw@")
        async with aioflow.Client(url) as client:
            with pytest.raises(aioflow.BatchIncomplete) as err:
                await client.submit_many("bulk", range(12), run_ids=[f"k{i}" for i in range(12)])
    finally:
        await redis.acl_deluser("bulk")
    e = err.value
    assert e.unknown and e.submitted
    assert {RunId.parse(r).partition for r in e.unknown.values()} == {broken}
    assert broken not in {RunId.parse(r).partition for r in e.submitted}
    assert len(e.submitted) + len(e.unknown) == 12
    assert await run_keys(redis) == {RunId.parse(r).key for r in e.submitted}


@contextlib.asynccontextmanager
async def gateway(url: str, **settings: Any) -> AsyncIterator[tuple[HttpClient, Stack]]:
    async with running([make_flow()], url) as stack:
        app = create_app(
            stack.redis, flows=[make_flow()], settings=aioflow.Settings(redis_url=url, **settings)
        )
        async with TestClient(TestServer(app)) as http:
            yield http, stack


async def test_http_batch(redis_url: str) -> None:
    async with gateway(redis_url) as (http, stack):
        resp = await http.post("/flow/bulk/batch?tag=t", json=[{"n": 1}, {"n": 2}, "three"])
        assert resp.status == 202
        ids = (await resp.json())["run_ids"]
        got = [await stack.client.result(r, timeout=T) for r in ids]
        assert [g["x"] for g in got] == [{"n": 1}, {"n": 2}, "three"]
        assert got[0]["opts"] == {"tag": ["t"]}
        resp = await http.post(
            "/flow/bulk/batch", json={"inputs": [1, 2], "run_ids": ["mine", None]}
        )
        assert resp.status == 202
        ids2 = (await resp.json())["run_ids"]
        assert ids2[0] == str(await stack.client.engine.new_run_id("bulk", "mine"))


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"inputs": [1], "run_ids": ["bad id"]}, 400, "invalid_batch"),
        ({"inputs": [1], "run_ids": [5]}, 400, "invalid_batch"),
        ({"not": "a batch"}, 400, "invalid_batch"),
        ([1] * 6, 413, "batch_too_large"),
    ],
)
async def test_http_batch_refusals(redis_url: str, body: Any, status: int, error: str) -> None:
    async with gateway(redis_url, max_batch=5) as (http, stack):
        resp = await http.post("/flow/bulk/batch", json=body)
        assert resp.status == status
        assert (await resp.json())["error"] == error
        assert await run_keys(stack.redis) == set()
        resp = await http.post("/flow/bulk/batch", json=[1] * 5)  # at the limit: fine
        assert resp.status == 202


async def test_http_batch_body_limit_and_type(redis_url: str) -> None:
    async with gateway(redis_url, max_body=1024) as (http, stack):
        resp = await http.post("/flow/bulk/batch", json=["y" * 100] * 20)
        assert resp.status == 413
        resp = await http.post(
            "/flow/bulk/batch", data=b"[1]", headers={"Content-Type": "text/plain"}
        )
        assert resp.status == 415
        resp = await http.post("/flow/nope/batch", json=[1])
        assert resp.status == 404
        assert await run_keys(stack.redis) == set()


async def test_http_batch_item_over_max_value(redis_url: str) -> None:
    async with gateway(redis_url, max_value=100) as (http, stack):
        resp = await http.post("/flow/bulk/batch", json=[1, "z" * 200, 3])
        assert resp.status == 400
        doc = await resp.json()
        assert doc["error"] == "invalid_batch" and "item 1" in doc["detail"]
        assert await run_keys(stack.redis) == set()
