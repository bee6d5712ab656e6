"""Bounded storage: finished runs expire with every key they own, run-index entries
of expired runs are dropped, streams are trimmed but never past a pending entry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

import aioflow
from aioflow.app import connect
from aioflow.engine.engine import register
from aioflow.store import keys
from aioflow.store.scripts import SCRIPTS
from tests.helpers import wait_until

T = 10.0


class Pool:
    """In-process workers on one Redis; :meth:`start` adds one (its first housekeeping
    pass trims the streams and prunes the run index at once)."""

    def __init__(self, flows: Sequence[aioflow.Flow], redis: Redis, s: aioflow.Settings) -> None:
        self.flows = flows
        self.redis = redis
        self.settings = s
        self.workers: list[aioflow.Worker] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> aioflow.Worker:
        w = aioflow.Worker(self.flows, self.redis, settings=self.settings)
        await w.prepare()
        self.workers.append(w)
        self.tasks.append(asyncio.create_task(w.run()))
        return w


@contextlib.asynccontextmanager
async def workers(
    flows: Sequence[aioflow.Flow], url: str, settings: aioflow.Settings
) -> AsyncIterator[Pool]:
    """A pool with one worker started; every worker is stopped at the end."""
    redis = connect(url)
    pool = Pool(flows, redis, settings)
    try:
        await pool.start()
        yield pool
    finally:
        for w in pool.workers:
            w.stop()
        for t in pool.tasks:
            await t
        await redis.aclose()


async def run_keys(redis: Redis, key: str) -> list[bytes]:
    """Every key under ``af:`` whose name contains the run key."""
    return [k async for k in redis.scan_iter(match="af:*", count=1000) if key.encode() in k]


# -- expiry -------------------------------------------------------------------------------


async def test_finished_runs_expire_with_every_key(redis_url: str, redis: Redis) -> None:
    flow = aioflow.Flow("ttl")
    gate = asyncio.Event()
    blocked = asyncio.Event()
    callbacks: list[dict[str, Any]] = []

    @flow.node
    async def work(x: str, ctx: aioflow.Context) -> str:
        await ctx.store.set("seen", x)
        if x == "fail":
            raise ValueError("failed on purpose")
        if x == "block":
            blocked.set()
            await asyncio.Event().wait()  # until stopped
        if x == "park":
            await gate.wait()
        return x

    @flow.node(after=work)
    async def finish(x: str) -> str:
        return x.upper()

    async def receive(request: web.Request) -> web.Response:
        callbacks.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/cb", receive)
    settings = aioflow.Settings(
        redis_url=redis_url, result_ttl=1.0, visibility_timeout=1.5, callback_allow_private=True
    )
    async with (
        TestServer(app) as server,
        workers([flow], redis_url, settings) as pool,
        aioflow.Client(redis_url, result_ttl=1.0) as client,
    ):

        async def expiring(run_id: str) -> None:
            """Right after the run ended: every key it owns has a TTL of result_ttl."""
            names = await run_keys(redis, keys.RunId.parse(run_id).key)
            assert names, f"no key of {run_id}"
            for name in names:
                ttl = await redis.pttl(name)
                assert 0 < ttl <= 1000, (name, ttl)

        done = await client.submit("ttl", "ok")
        failed = await client.submit("ttl", "fail")
        stopped = await client.submit("ttl", "block")
        parked = await client.submit("ttl", "park")
        called = await client.submit("ttl", "ok", callback_url=str(server.make_url("/cb")))
        assert await client.result(done, timeout=T) == "OK"
        await expiring(done)
        try:
            await client.result(failed, timeout=T)
        except aioflow.RunFailed as e:
            assert e.error_type == "ValueError"
        else:
            raise AssertionError("the failing run completed")
        await expiring(failed)
        await asyncio.wait_for(blocked.wait(), T)
        assert await client.stop(stopped) is aioflow.Status.STOPPED
        await expiring(stopped)
        # paused with a parked vertex, then stopped: the parked list goes too
        assert await client.pause(parked) is aioflow.Status.PAUSED
        gate.set()
        parked_list = keys.RunId.parse(parked).parked

        async def has_parked() -> bool:
            return bool(await redis.llen(parked_list))

        await wait_until(has_parked, what="a vertex parked")
        assert await redis.ttl(parked_list) == -1  # a paused run does not expire
        assert await client.stop(parked) is aioflow.Status.STOPPED
        await expiring(parked)
        assert not await redis.exists(parked_list)
        assert await client.result(called, timeout=T) == "OK"

        async def callback_recorded() -> bool:
            return (await client.state(called)).callback is not None

        await wait_until(callback_recorded, what="callback recorded")
        assert callbacks and callbacks[0]["run_id"] == called
        await expiring(called)
        rids = [keys.RunId.parse(r) for r in (done, failed, stopped, parked, called)]

        async def all_gone() -> bool:
            return not any([await redis.exists(rid.run) for rid in rids])

        await wait_until(all_gone, timeout=5, what="finished runs expired")
        for rid in rids:
            assert await run_keys(redis, rid.key) == []
        # nothing of the runs is left but the shared per-partition keys
        left = {k async for k in redis.scan_iter(match="af:*", count=1000)}
        tag = keys.tag("ttl", 0).encode()
        assert left <= {
            b"af:flows",
            b"af:fv:{ttl}",
            b"af:fvseen:{ttl}",
            b"af:workers",
            tag + b":q",
            tag + b":qh",  # the streams of the priorities
            tag + b":ql",
            tag + b":i",
            tag + b":z",
            tag + b":dlq",
        }, left

        # a worker's housekeeping drops the index entries of expired runs (a fresh
        # worker does it on its first pass)
        await pool.start()

        async def index_empty() -> bool:
            return await redis.zcard(f"{keys.tag('ttl', 0)}:i") == 0

        await wait_until(index_empty, timeout=5, what="run index pruned")
        for rid in rids:
            try:
                await client.state(str(rid))
            except aioflow.RunNotFound:
                continue
            raise AssertionError(f"{rid} still has a state")


# -- stream trimming ----------------------------------------------------------------------


async def test_stream_trimmed_but_never_past_pending_entries(redis_url: str, redis: Redis) -> None:
    flow = aioflow.Flow("trimmed")
    gate = asyncio.Event()
    held: list[int] = []

    @flow.node
    async def work(x: int) -> int:
        if x < 0:
            held.append(x)
            await gate.wait()
        return x

    stream = keys.stream("trimmed", 0)
    settings = aioflow.Settings(redis_url=redis_url, concurrency=32, visibility_timeout=1.5)
    async with (
        workers([flow], redis_url, settings) as pool,
        aioflow.Client(redis_url) as client,
    ):
        try:
            added = 0
            for batch in range(3):
                got = await asyncio.gather(
                    *(client.execute("trimmed", i, timeout=T) for i in range(40))
                )
                assert got == list(range(40))
                added += 40
                if batch == 1:
                    for i in range(1, 4):
                        await client.submit("trimmed", -i)
                    added += 3
                    await wait_until(lambda: len(held) == 3, what="three nodes held")
            pending: Any = await redis.xpending_range(stream, keys.GROUP, "-", "+", 100)
            held_ids = sorted(p["message_id"] for p in pending)
            assert len(held_ids) == 3

            # a fresh worker trims on its first housekeeping pass
            await pool.start()

            async def trimmed() -> bool:
                return int(await redis.xlen(stream)) < added

            await wait_until(trimmed, timeout=5, what="stream trimmed")
            # never past the oldest pending entry: it and everything after it stay
            first: Any = await redis.xrange(stream, "-", "+", count=1)
            assert first[0][0] == held_ids[0]
            for mid in held_ids:
                assert await redis.xrange(stream, mid, mid), f"pending entry {mid!r} trimmed"
            after: Any = await redis.xrange(stream, held_ids[0], "+")
            assert len(after) >= 40 + 3

            gate.set()

            async def no_pending() -> bool:
                info: Any = await redis.xpending(stream, keys.GROUP)
                return int(info["pending"]) == 0

            await wait_until(no_pending, what="held nodes done")
            assert len(held) == 3
            # once nothing is pending, the next pass trims to the last delivered entry
            await pool.start()

            async def short() -> bool:
                return int(await redis.xlen(stream)) <= 1

            await wait_until(short, timeout=5, what="stream trimmed to the last entry")
        finally:
            gate.set()


async def test_trim_keeps_undelivered_entries(redis_url: str, redis: Redis) -> None:
    flow = aioflow.Flow("undelivered")

    @flow.node
    async def work(x: int) -> int:
        return x

    await register(redis, [flow])
    stream = keys.stream("undelivered", 0)
    ids = [await redis.xadd(stream, {"r": f"k{i}", "a": "work"}) for i in range(6)]
    assert await SCRIPTS.call(redis, "trim", stream) == 0
    assert await redis.xlen(stream) == 6
    # deliver and ack two; one more is delivered and still pending
    got: Any = await redis.xreadgroup(keys.GROUP, "c", {stream: ">"}, count=3)
    assert [e[0] for e in got[0][1]] == ids[:3]
    await redis.xack(stream, keys.GROUP, ids[0], ids[1])
    await SCRIPTS.call(redis, "trim", stream)
    remaining: Any = await redis.xrange(stream)
    assert [e[0] for e in remaining] == ids[2:]
    # all acked: trimmed up to (not past) the last delivered one; undelivered stay
    await redis.xack(stream, keys.GROUP, ids[2])
    await SCRIPTS.call(redis, "trim", stream)
    remaining = await redis.xrange(stream)
    assert [e[0] for e in remaining] == ids[2:]
