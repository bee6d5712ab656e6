"""Invariant 2 and the fencing half of invariant 3: a vertex message delivered twice
changes nothing the second time, and a completion from a worker whose message was
reclaimed is refused."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

import aioflow
from aioflow.app import connect
from aioflow.core import codec
from aioflow.status import Status
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import RedisClient
from tests.engine_helpers import running
from tests.helpers import wait_until

T = 10.0
TTL_MS = 60_000


def _diamond(name: str, join_calls: list[Any]) -> aioflow.Flow:
    flow = aioflow.Flow(name)

    @flow.node
    async def top(x: int) -> int:
        return x + 1

    @flow.node(after=top)
    async def left(x: int) -> int:
        return x * 10

    @flow.node(after=top)
    async def right(x: int) -> int:
        return x * 100

    @flow.node(after=[left, right])
    async def join(d: dict[str, int], ctx: aioflow.Context) -> int:
        join_calls.append((d, ctx.attempt))
        return d["left"] + d["right"]

    return flow


async def _group(redis: RedisClient, stream: str) -> dict[str, Any]:
    for g in await redis.xinfo_groups(stream):
        name = g["name"]
        if (name.decode() if isinstance(name, bytes) else name) == keys.GROUP:
            return dict(g)
    raise AssertionError(f"no group {keys.GROUP} on {stream}")


def _id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


async def _consumed(redis: RedisClient, stream: str, last_id: bytes) -> bool:
    """The group has delivered everything up to ``last_id`` and nothing is pending."""
    g = await _group(redis, stream)
    # "lag" exists from Redis 7 on; last-delivered == last id says the same on 6.2
    lag_ok = g.get("lag", 0) in (0, None)
    return bool(_id(g["last-delivered-id"]) == _id(last_id) and g["pending"] == 0 and lag_ok)


Entry = tuple[bytes, dict[bytes, bytes]]


async def _xrange(redis: RedisClient, stream: str, lo: str = "-") -> list[Entry]:
    entries: Any = await redis.xrange(stream, min=lo, max="+")
    return [(mid, dict(fields)) for mid, fields in entries]


async def _entries_after(redis: RedisClient, stream: str, after: bytes) -> list[Entry]:
    return await _xrange(redis, stream, f"({_id(after)}")


async def _xadd(redis: RedisClient, stream: str, fields: dict[Any, Any]) -> bytes:
    mid: Any = await redis.xadd(stream, fields)
    assert isinstance(mid, bytes)
    return mid


async def _read_one(redis: Redis, consumer: str, stream: str) -> Entry:
    """XREADGROUP one new message as ``consumer``, by hand."""
    resp: Any = await redis.xreadgroup(keys.GROUP, consumer, {stream: ">"}, count=1)
    assert resp, "nothing to read"
    [[_, [(mid, fields)]]] = resp
    return mid, dict(fields)


async def test_duplicate_join_message_after_the_run_completed(any_redis_url: str) -> None:
    calls: list[Any] = []
    flow = _diamond("dup-after", calls)
    async with running([flow], any_redis_url) as s:
        w = s.workers[0]
        run_id = await s.client.submit("dup-after", 1)
        assert await s.client.result(run_id, timeout=T) == 220
        await wait_until(lambda: w.completed == 4, timeout=T, what="4 completions applied")
        rid = RunId.parse(run_id)
        stream = rid.stream
        before = await s.redis.hgetall(rid.run)

        # the join's message as the completion script enqueued it (XRANGE, before any trim)
        originals = [f for _, f in await _xrange(s.redis, stream) if f.get(b"a") == b"join"]
        assert originals == [{b"r": rid.key.encode(), b"a": b"join"}]
        dup_id = await _xadd(s.redis, stream, originals[0])

        await wait_until(
            lambda: _consumed(s.redis, stream, dup_id), timeout=T, what="the duplicate consumed"
        )
        assert len(calls) == 1, calls
        assert await s.client.result(run_id, timeout=T) == 220
        assert w.completed == 4  # no second completion was applied for the join
        assert await _entries_after(s.redis, stream, dup_id) == []  # nothing enqueued
        after = await s.redis.hgetall(rid.run)
        assert after == before
        state = await s.client.state(run_id)
        assert state.status is Status.COMPLETED
        assert state.vertices["join"].attempts == 1


async def test_duplicate_join_message_while_the_run_is_running(redis_url: str) -> None:
    """The join's marker is set: the copy is acked by the claim, nothing runs or is enqueued."""
    calls: list[Any] = []
    flow = _diamond("dup-during", calls)
    release = asyncio.Event()
    tail_calls: list[int] = []

    @flow.node(after="join")
    async def tail(x: int) -> int:
        tail_calls.append(x)
        await release.wait()
        return x + 1

    async with running([flow], redis_url) as s:
        w = s.workers[0]
        run_id = await s.client.submit("dup-during", 1)
        rid = RunId.parse(run_id)
        stream = rid.stream
        try:
            await wait_until(lambda: tail_calls == [220], timeout=T, what="tail running")
            dup_id = await _xadd(s.redis, stream, {"r": rid.key, "a": "join"})

            async def consumed() -> bool:
                g = await _group(s.redis, stream)
                # only the tail's message is pending (held by the running node)
                return bool(_id(g["last-delivered-id"]) == _id(dup_id) and g["pending"] == 1)

            await wait_until(consumed, timeout=T, what="the duplicate consumed")
            assert await _entries_after(s.redis, stream, dup_id) == []
            assert len(calls) == 1
            assert w.completed == 4
        finally:
            release.set()
        assert await s.client.result(run_id, timeout=T) == 221
        await wait_until(lambda: w.completed == 5, timeout=T, what="5 completions")
        assert tail_calls == [220]
        assert len(calls) == 1


async def test_join_executed_twice_completes_once(any_redis_url: str) -> None:
    """Both copies of the join's message run (at least once), but only the first
    completion is applied: the tail is enqueued once and the result is unchanged."""
    flow = aioflow.Flow("dup-twice")
    gate = asyncio.Event()
    join_attempts: list[int] = []
    tail_calls: list[int] = []

    @flow.node
    async def top(x: int) -> int:
        return x

    @flow.node(after=top)
    async def left(x: int) -> int:
        return x + 1

    @flow.node(after=top)
    async def right(x: int) -> int:
        return x + 2

    @flow.node(after=[left, right])
    async def join(d: dict[str, int], ctx: aioflow.Context) -> int:
        join_attempts.append(ctx.attempt)
        await gate.wait()
        return d["left"] * d["right"]

    @flow.node(after=join)
    async def tail(x: int) -> int:
        tail_calls.append(x)
        return x

    async with running([flow], any_redis_url) as s:
        w = s.workers[0]
        run_id = await s.client.submit("dup-twice", 1)
        rid = RunId.parse(run_id)
        try:
            await wait_until(lambda: join_attempts == [1], timeout=T, what="join running")
            await s.redis.xadd(rid.stream, {"r": rid.key, "a": "join"})
            await wait_until(
                lambda: sorted(join_attempts) == [1, 2], timeout=T, what="join running twice"
            )
        finally:
            gate.set()
        assert await s.client.result(run_id, timeout=T) == 6
        # both join executions are resolved: one applied, one refused as a duplicate
        await wait_until(lambda: not w._inflight, timeout=T, what="worker idle")
        g = await _group(s.redis, rid.stream)
        assert g["pending"] == 0
        assert tail_calls == [6]
        assert w.completed == 5  # top, left, right, join (once), tail
        state = await s.client.state(run_id)
        assert state.status is Status.COMPLETED
        assert state.result == 6


def _chain(name: str, runs: list[int], gate: asyncio.Event | None = None) -> aioflow.Flow:
    flow = aioflow.Flow(name)

    @flow.node
    async def first(x: int) -> int:
        runs.append(x)
        if gate is not None:
            await gate.wait()
        return x + 1

    @flow.node(after=first)
    async def second(x: int) -> int:
        return x * 2

    return flow


def _ghost_record(msg_id: bytes, uid: str, value: Any) -> list[Any]:
    """A completion of ``first`` as complete.lua reads it: id uid marker mode value
    vaddr vstatus nops, then the ops (enqueue ``second`` with ``value``)."""
    enc = codec.encode(value)
    return [msg_id, uid, "o:first", "c", enc, "first", "completed", 1, "E", "second", "n", enc]


async def test_complete_script_applies_the_owners_record(redis_url: str) -> None:
    """Control for the fencing test: the same record from the owning consumer is applied."""
    flow = _chain("owner", [])
    redis = connect(redis_url)
    try:
        await aioflow.Worker([flow], redis).prepare()  # registers; not started
        async with aioflow.Client(redis=redis) as client:
            run_id = await client.submit("owner", 1)
        rid = RunId.parse(run_id)
        msg_id, fields = await _read_one(redis, "manual", rid.stream)
        assert fields == {b"r": rid.key.encode(), b"a": b"first", b"d": codec.encode(1)}
        res = await SCRIPTS.call(
            redis,
            "complete",
            rid.stream,
            "manual",
            repr(time.time()),
            TTL_MS,
            *_ghost_record(msg_id, rid.key, 99),
        )
        assert res == [b"ok"]
        assert await redis.hget(rid.run, "o:first") == codec.encode(99)
        entries = await _entries_after(redis, rid.stream, msg_id)
        assert [f for _, f in entries] == [
            {b"r": rid.key.encode(), b"a": b"second", b"d": codec.encode(99)}
        ]
        assert (await redis.xpending(rid.stream, keys.GROUP))["pending"] == 0
    finally:
        await redis.aclose()


@contextlib.asynccontextmanager
async def _worker(
    flow: aioflow.Flow, redis: Redis, **settings: Any
) -> AsyncIterator[aioflow.Worker]:
    w = aioflow.Worker([flow], redis, settings=aioflow.Settings(**settings))
    task = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        w.stop()
        await task


async def test_reclaimed_message_runs_once_and_ghost_is_fenced(redis_url: str) -> None:
    runs: list[int] = []
    gate = asyncio.Event()
    flow = _chain("fenced", runs, gate)
    redis = connect(redis_url)
    try:
        await aioflow.Worker([flow], redis).prepare()  # registers the flow and its group
        async with aioflow.Client(redis=redis) as client:
            run_id = await client.submit("fenced", 5)
            rid = RunId.parse(run_id)
            # "ghost" reads the entry message and then stalls forever
            msg_id, fields = await _read_one(redis, "ghost", rid.stream)
            assert fields[b"a"] == b"first"
            pending = await redis.xpending_range(rid.stream, keys.GROUP, "-", "+", 10)
            assert [(p["message_id"], p["consumer"]) for p in pending] == [(msg_id, b"ghost")]

            async with _worker(flow, redis, visibility_timeout=0.5, grace=5) as w:
                try:
                    # the real worker reclaims it after the visibility timeout and runs it
                    await wait_until(lambda: runs == [5], timeout=T, what="reclaimed and running")
                    pending = await redis.xpending_range(rid.stream, keys.GROUP, "-", "+", 10)
                    assert [(p["message_id"], p["consumer"]) for p in pending] == [
                        (msg_id, w.consumer.encode())
                    ]
                    xlen = await redis.xlen(rid.stream)
                    before = await redis.hgetall(rid.run)

                    # the ghost wakes up while the real worker holds the message: refused
                    res = await SCRIPTS.call(
                        redis,
                        "complete",
                        rid.stream,
                        "ghost",
                        repr(time.time()),
                        TTL_MS,
                        *_ghost_record(msg_id, rid.key, "ghost-value"),
                    )
                    assert res == [b"fenced"]
                    assert await redis.xlen(rid.stream) == xlen
                    assert await redis.hgetall(rid.run) == before
                finally:
                    gate.set()

                assert await client.result(run_id, timeout=T) == 12
                await wait_until(lambda: w.completed == 2, timeout=T, what="2 completions")
                assert runs == [5]  # the vertex ran once
                state = await client.state(run_id)
                assert state.vertices["first"].attempts == 1

                # and once more after the run completed (the message is acked by now)
                xlen = await redis.xlen(rid.stream)
                before = await redis.hgetall(rid.run)
                res = await SCRIPTS.call(
                    redis,
                    "complete",
                    rid.stream,
                    "ghost",
                    repr(time.time()),
                    TTL_MS,
                    *_ghost_record(msg_id, rid.key, "ghost-value"),
                )
                assert res == [b"fenced"]
                assert await redis.xlen(rid.stream) == xlen
                assert await redis.hgetall(rid.run) == before
                assert await client.result(run_id, timeout=T) == 12
                assert w.fenced == 0 and w.completed == 2
    finally:
        await redis.aclose()
