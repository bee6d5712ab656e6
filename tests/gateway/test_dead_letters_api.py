"""Dead letters through the HTTP API, the client and ``aioflow dlq``.

Dead letters are made in-process, without killing anything: a poison message
(garbage fields) is added to the flow's stream, and a real vertex message is
read by hand as consumer ``ghost`` and XCLAIMed to it again and again so its
delivery count passes ``max_deliveries``; a real worker with a short visibility
timeout then reclaims it, and the claim script dead-letters it and fails the run
with error type ``DeadLetter``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

import aioflow
from aioflow.engine.engine import register
from aioflow.gateway.routes import create_app
from aioflow.store.keys import RunId
from tests.engine_helpers import Stack, running
from tests.helpers import run_aioflow, wait_until

ROOT = Path(__file__).resolve().parents[2]
T = 10.0
MAX_DELIVERIES = 2
GHOST_CLAIMS = 2  # XCLAIMs by the ghost after its read: 1 + 2 deliveries, the worker's is 4th
FLOW = "dlf"
STREAM = f"af:{{{FLOW}:0}}:q"
DLQ = f"af:{{{FLOW}:0}}:dlq"
HttpClient = TestClient[web.Request, web.Application]


def make_flow() -> aioflow.Flow:
    flow = aioflow.Flow(FLOW)

    @flow.node
    async def double(x: int) -> int:
        return x * 2

    return flow


@dataclass
class Letters:
    """What :func:`dead_lettered` set up: the worker stack and the dead letters' facts."""

    stack: Stack
    runs: list[str]  # run ids failed by a dead letter, in order of submission
    message_ids: dict[str, str]  # run id -> id of its vertex message on the stream
    poison_id: str  # stream id of the poison message


async def _ghost_deliveries(redis: Redis, message_id: str) -> int:
    pending: Any = await redis.xpending_range(
        STREAM, "workers", min=message_id, max=message_id, count=1
    )
    assert len(pending) == 1, pending
    assert pending[0]["consumer"] == b"ghost"
    return int(pending[0]["times_delivered"])


@contextlib.asynccontextmanager
async def dead_lettered(url: str, redis: Redis, inputs: list[int]) -> AsyncIterator[Letters]:
    """One dead letter per input (a real run whose message went past max_deliveries)
    and one poison message; a worker (max_deliveries=2) keeps running in the block."""
    flow = make_flow()
    await register(redis, [flow])
    async with aioflow.Client(url) as client:
        runs = [await client.submit(FLOW, x) for x in inputs]
    # the ghost reads every message (delivery 1), then claims each again and again
    resp: Any = await redis.xreadgroup("workers", "ghost", {STREAM: ">"}, count=100)
    entries = resp[0][1]
    assert len(entries) == len(runs)
    message_ids: dict[str, str] = {}
    for mid, fields in entries:
        message_ids[f"{FLOW}.0.{fields[b'r'].decode()}"] = mid.decode()
    assert set(message_ids) == set(runs)
    for mid in message_ids.values():
        for _ in range(GHOST_CLAIMS):
            claimed: Any = await redis.xclaim(STREAM, "workers", "ghost", 0, [mid])
            assert [c[0].decode() for c in claimed] == [mid]
        assert await _ghost_deliveries(redis, mid) == 1 + GHOST_CLAIMS
    assert 1 + GHOST_CLAIMS == MAX_DELIVERIES + 1  # already past the limit at the next claim
    poison: Any = await redis.xadd(STREAM, {"junk": b"\xff\x00garbage", "x": "1"})
    async with running(
        [flow], url, max_deliveries=MAX_DELIVERIES, visibility_timeout=0.3, grace=1.0
    ) as stack:

        async def all_dead() -> bool:
            return bool(await redis.xlen(DLQ) == len(runs) + 1)

        await wait_until(all_dead, timeout=T, what="the poison and the ghosted runs dead-lettered")
        for run_id in runs:
            with pytest.raises(aioflow.RunFailed) as info:
                await stack.client.result(run_id, timeout=T)
            assert info.value.error_type == "DeadLetter"
            assert info.value.vertex == "double"
            assert f"max_deliveries={MAX_DELIVERIES}" in info.value.message
            assert (await stack.client.state(run_id)).status is aioflow.Status.FAILED
        yield Letters(stack, runs, message_ids, poison.decode())


async def _dlq_ids(redis: Redis) -> dict[str, str]:
    """Dead-letter id -> the original message id, read straight from the dlq stream."""
    rows: Any = await redis.xrange(DLQ)
    return {f"{FLOW}.0.{eid.decode()}": f[b"id"].decode() for eid, f in rows}


async def _json(resp: ClientResponse, status: int) -> Any:
    text = await resp.text()
    assert resp.status == status, (resp.status, text)
    assert resp.content_type == "application/json", text
    assert "Traceback" not in text
    return json.loads(text)


async def _error(resp: ClientResponse, status: int) -> dict[str, Any]:
    doc = await _json(resp, status)
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], doc
    assert isinstance(doc.get("detail"), str), doc
    return doc


async def test_dead_letters_listed_and_replayed_over_http(redis_url: str, redis: Redis) -> None:
    async with dead_lettered(redis_url, redis, [21]) as letters:
        [run_id] = letters.runs
        stack = letters.stack
        ids = await _dlq_ids(redis)
        by_message = {mid: dlid for dlid, mid in ids.items()}
        real_id = by_message[letters.message_ids[run_id]]
        poison_id = by_message[letters.poison_id]

        app = create_app(
            stack.redis, flows=[make_flow()], settings=aioflow.Settings(redis_url=redis_url)
        )
        async with TestClient(TestServer(app)) as http:
            doc = await _json(await http.get("/dead-letters"), 200)
            listed = {d["id"]: d for d in doc["dead_letters"]}
            assert set(listed) == {real_id, poison_id}

            real = listed[real_id]
            assert real["run_id"] == run_id
            assert real["vertex"] == "double"
            assert real["message_id"] == letters.message_ids[run_id]
            # the ghost's 3 deliveries and the worker's reclaim
            assert real["deliveries"] == GHOST_CLAIMS + 2
            assert f"delivered {GHOST_CLAIMS + 2} times" in real["reason"]
            assert f"max_deliveries={MAX_DELIVERIES}" in real["reason"]

            poison = listed[poison_id]
            assert poison["run_id"] is None
            assert poison["message_id"] == letters.poison_id
            assert "undecodable" in poison["reason"]
            assert isinstance(poison["deliveries"], int)
            assert isinstance(poison["vertex"], str)

            # the client agrees with the HTTP API
            assert await stack.client.dead_letters() == doc["dead_letters"]

            # replaying the poison message is refused: there is nothing to rerun
            err = await _error(await http.post(f"/dead-letters/{poison_id}/replay"), 409)
            assert poison_id in err["detail"]

            # replaying the real one reruns its run, which now completes
            doc = await _json(await http.post(f"/dead-letters/{real_id}/replay"), 200)
            assert doc == {"run_id": run_id, "status": "running"}
            assert await stack.client.result(run_id, timeout=T) == 42
            state = await stack.client.state(run_id)
            assert state.status is aioflow.Status.COMPLETED

            # ... and the entry has left the dead-letter stream; the poison stays
            doc = await _json(await http.get("/dead-letters"), 200)
            assert [d["id"] for d in doc["dead_letters"]] == [poison_id]
            assert list(await _dlq_ids(redis)) == [poison_id]
            assert [d["id"] for d in await stack.client.dead_letters()] == [poison_id]

            # a dead letter replayed already is unknown now
            await _error(await http.post(f"/dead-letters/{real_id}/replay"), 404)


async def test_replay_unknown_and_malformed_ids(redis_url: str, redis: Redis) -> None:
    async with dead_lettered(redis_url, redis, [1]) as letters:
        app = create_app(
            letters.stack.redis,
            flows=[make_flow()],
            settings=aioflow.Settings(redis_url=redis_url),
        )
        async with TestClient(TestServer(app)) as http:
            for unknown in (f"{FLOW}.0.1-1", f"{FLOW}.0.99999-0", "otherflow.0.1-1"):
                await _error(await http.post(f"/dead-letters/{unknown}/replay"), 404)
            for malformed in (
                "garbage",
                f"{FLOW}.0.abc",
                f"{FLOW}.x.1-1",
                f"{FLOW}.0.1",
                f"{FLOW}.0.1-1-1",
                "Bad_Flow.0.1-1",
                f"{FLOW}.0.1-1.2",
            ):
                doc = await _error(await http.post(f"/dead-letters/{malformed}/replay"), 400)
                assert doc["error"] == "invalid_id", doc
            # nothing was replayed: both dead letters are still there
            assert len(await _dlq_ids(redis)) == 2
            [run_id] = letters.runs
            assert (await letters.stack.client.state(run_id)).status is aioflow.Status.FAILED


@pytest.mark.parametrize(
    "malformed",
    [
        pytest.param(f"{FLOW}.0.1-1%0A", id="trailing-newline"),
        pytest.param(f"{FLOW}.0.99999999999999999999-0", id="beyond-uint64"),
    ],
)
async def test_replay_id_that_passes_the_regex_but_not_redis_is_400(
    redis_url: str, redis: Redis, malformed: str
) -> None:
    """Ids that match ``DLQ_ID_RE`` but that Redis refuses as stream ids must still be
    ``400 invalid_id``, not a 500."""
    flow = make_flow()
    app = create_app(redis, flows=[flow], settings=aioflow.Settings())
    async with TestClient(TestServer(app)) as http:
        doc = await _error(await http.post(f"/dead-letters/{malformed}/replay"), 400)
        assert doc["error"] == "invalid_id", doc


async def test_dlq_cli_lists_and_replays(redis_url: str, redis: Redis) -> None:
    async with dead_lettered(redis_url, redis, [5]) as letters:
        [run_id] = letters.runs
        ids = await _dlq_ids(redis)
        by_message = {mid: dlid for dlid, mid in ids.items()}
        real_id = by_message[letters.message_ids[run_id]]
        poison_id = by_message[letters.poison_id]

        code, out, err = await run_aioflow("dlq", "list", "--redis-url", redis_url)
        assert code == 0, err
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert {r["id"] for r in rows} == {real_id, poison_id}, out
        real = next(r for r in rows if r["id"] == real_id)
        assert real["run_id"] == run_id
        assert real["vertex"] == "double"
        assert real["deliveries"] == GHOST_CLAIMS + 2

        code, out, err = await run_aioflow("dlq", "replay", real_id, "--redis-url", redis_url)
        assert code == 0, err
        assert real_id in out and run_id in out, out
        assert await letters.stack.client.result(run_id, timeout=T) == 10
        assert list(await _dlq_ids(redis)) == [poison_id]

        # errors exit with status 2 and say why
        code, out, err = await run_aioflow("dlq", "replay", poison_id, "--redis-url", redis_url)
        assert code == 2, (out, err)
        assert poison_id in err and "Traceback" not in err, err
        assert list(await _dlq_ids(redis)) == [poison_id]


async def test_dead_letters_name_their_runs_newest_first(redis_url: str, redis: Redis) -> None:
    """The run id a dead letter names is a valid run id of its flow (usable with the client)."""
    async with dead_lettered(redis_url, redis, [3, 4]) as letters:
        listed = await letters.stack.client.dead_letters()
        run_ids = sorted(d["run_id"] for d in listed if d["run_id"] is not None)
        assert run_ids == sorted(letters.runs)
        for rid in run_ids:
            assert RunId.parse(rid, flow=FLOW).partition == 0
        # newest first
        ats = [d["at"] for d in listed]
        assert ats == sorted(ats, reverse=True)
