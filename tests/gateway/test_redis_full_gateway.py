"""A Redis at ``maxmemory`` (noeviction) refuses writes: submitting answers 503
``redis_full`` over HTTP and raises :class:`aioflow.RedisFull` from both clients,
``/healthz`` says Redis is full, and all of it clears once memory is freed. On a real
redis-server with a small ``maxmemory``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

import aioflow
from aioflow.app import connect
from aioflow.gateway.routes import create_app
from tests.helpers import RedisFactory


def make_flow() -> aioflow.Flow:
    flow = aioflow.Flow("fill")

    @flow.node
    async def step(x: Any) -> Any:
        return x

    return flow


async def fill(redis: Redis) -> list[str]:
    """Write filler keys until Redis refuses even a small one; answers their names.
    (A big write is refused first, while a small one still fits: Redis counts the
    write's own arguments. Only once used memory is over maxmemory is every write
    refused, which is what /healthz reports.)"""
    names: list[str] = []
    for size in (64 * 1024, 200):
        for i in range(10_000):
            try:
                await redis.set(f"filler:{size}:{i}", b"x" * size)
            except OutOfMemoryError:
                break
            names.append(f"filler:{size}:{i}")
        else:
            raise AssertionError("Redis never ran out of memory: is maxmemory set?")
    return names


async def doc_of(resp: ClientResponse, status: int) -> Any:
    text = await resp.text()
    assert resp.status == status, (resp.status, text)
    assert resp.content_type == "application/json", text
    assert "Traceback" not in text and "ResponseError" not in text, text
    return json.loads(text)


async def test_a_full_redis_is_503_redis_full_and_redis_full_errors(
    redis_factory: RedisFactory,
) -> None:
    server = redis_factory(
        appendonly=False, extra_args=["--maxmemory", "6mb", "--maxmemory-policy", "noeviction"]
    )
    redis = connect(server.url)
    app = create_app(redis, flows=[make_flow()], settings=aioflow.Settings(redis_url=server.url))
    try:
        async with TestClient(TestServer(app)) as http:
            base = str(http.server.make_url("")).rstrip("/")
            assert await doc_of(await http.get("/healthz"), 200) == {"ok": True, "redis": True}
            await doc_of(await http.post("/flow/fill", json=0), 202)  # registered, accepting

            filled = await fill(redis)
            # right at the limit, used memory moves with client buffers (a write fits,
            # the next does not): hold Redis clearly past it, as a grown dataset would
            used = int((await redis.info("memory"))["used_memory"])
            await redis.config_set("maxmemory", used - 512 * 1024)

            health = await doc_of(await http.get("/healthz"), 503)
            assert health["ok"] is False and health["redis"] == "full", health
            assert "maxmemory" in health["detail"], health

            for params in ({}, {"wait": "1"}):
                resp = await http.post(
                    "/flow/fill", json=1, params=params, headers={"X-Run-Id": "refused-1"}
                )
                err = await doc_of(resp, 503)
                assert err["error"] == "redis_full", err
                assert "full" in err["detail"], err
            resp = await http.post("/flow/fill/batch", json=[1, 2])
            assert resp.status == 503, await resp.text()
            metrics = await (await http.get("/metrics")).text()
            assert "aioflow_gateway_redis_full_total 2.0" in metrics, metrics

            async with aioflow.Client(server.url) as direct:
                with pytest.raises(aioflow.RedisFull):
                    await direct.submit("fill", 1, run_id="refused-2")
                with pytest.raises(aioflow.RedisUnavailable):  # its base class
                    await direct.execute("fill", 1, timeout=1)
                # reads still work while Redis is full
                with pytest.raises(aioflow.RunNotFound):
                    await direct.state("refused-1", flow="fill")
            async with aioflow.Client(base) as over_http:
                with pytest.raises(aioflow.RedisFull):
                    await over_http.submit("fill", 1, run_id="refused-3")

            # memory back: healthy again and submitting works
            await redis.delete(*filled)
            assert await doc_of(await http.get("/healthz"), 200) == {"ok": True, "redis": True}
            resp = await http.post("/flow/fill", json=2, headers={"X-Run-Id": "after"})
            assert (await doc_of(resp, 202))["run_id"] == "fill.0.after"
            async with aioflow.Client(server.url) as direct:
                for key in ("refused-1", "refused-2", "refused-3"):
                    with pytest.raises(aioflow.RunNotFound):
                        await direct.state(key, flow="fill")
                st = await direct.state("after", flow="fill")
                assert st.status is aioflow.Status.PENDING  # no worker here: it waits
    finally:
        await redis.aclose()
