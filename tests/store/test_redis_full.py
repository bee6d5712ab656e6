"""Redis at ``maxmemory`` (noeviction), on a real redis-server with a small limit: a
transition is refused whole, callers get ``RedisFull``, workers back off with one
warning per episode, and once memory returns every accepted run finishes and
nothing stays pending."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

import aioflow
from aioflow.app import connect
from aioflow.engine.engine import register
from aioflow.store import keys
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import Backend
from tests.engine_helpers import running
from tests.helpers import RedisFactory, wait_until

LEGS = 10


def fan_flow(gate: asyncio.Event | None = None) -> aioflow.Flow:
    """A 10-way fan-out whose legs each write ~2 KB: memory grows as runs go. With a
    ``gate``, every leg waits for it before it returns."""
    flow = aioflow.Flow("fan")

    async def start(data: Any) -> Any:
        return data

    async def leg(data: Any) -> str:
        if gate is not None:
            await gate.wait()
        return "x" * 2000

    async def join(data: dict[str, str]) -> int:
        return sum(len(v) for v in data.values())

    flow.node("start", start)
    legs = [flow.node(f"leg{i}", leg, after="start") for i in range(LEGS)]
    flow.node("join", join, after=[f"leg{i}" for i in range(LEGS)])
    assert len(legs) == LEGS
    return flow


async def used_memory(r: aioredis.Redis) -> int:
    info: Any = await r.info("memory")
    return int(info["used_memory"])


async def make_full(r: aioredis.Redis) -> None:
    """Set maxmemory below what is used, as an operator's limit reached by growth."""
    await r.config_set("maxmemory", max(1, await used_memory(r) - 64 * 1024))


async def test_a_full_redis_refuses_a_submit_whole(redis_factory: RedisFactory) -> None:
    server = redis_factory(appendonly=False, extra_args=["--maxmemory-policy", "noeviction"])
    flow = fan_flow()
    r = aioredis.Redis.from_url(server.url)
    try:
        async with aioflow.Client(server.url) as client:
            await register(client.redis, [flow])
            assert await client.submit(flow, 0, run_id="before")
            await make_full(r)
            before = {k async for k in r.scan_iter("*")}
            with pytest.raises(aioflow.RedisFull) as info:
                await client.submit(flow, 1, run_id="refused")
            assert isinstance(info.value, aioflow.RedisUnavailable)
            # nothing of the transition was applied: no run, no stream entry
            assert {k async for k in r.scan_iter("*")} == before
            assert await r.xlen(keys.stream("fan", 0)) == 1
            await r.config_set("maxmemory", 0)
            rid = await client.submit(flow, 1, run_id="refused")
            assert rid.endswith(".refused")
    finally:
        await r.aclose()


async def test_scripts_declare_their_flags_on_redis_7(redis_url: str) -> None:
    """The shebang is what makes Redis refuse a script before its first write: a script
    sent without it (compatibility mode) is refused a write at a time instead."""
    redis = connect(redis_url)
    backend = Backend(redis)
    try:
        await backend.start()
        info: Any = await backend.redis.info("server")
        major = int(str(info["redis_version"]).split(".")[0])
        fast: Any = backend.fast
        assert fast.script_flags is (major >= 7)
        flagged = SCRIPTS.flagged["complete"].splitlines()[0]
        assert flagged == "#!lua"
        assert SCRIPTS.flagged["lease"].startswith("#!lua flags=allow-oom\n")
        if major >= 7:
            # the script Redis runs is the flagged one (SCRIPT EXISTS by its SHA)
            await SCRIPTS.call(backend.fast, "trim", keys.stream("none", 0))
            exists: Any = await backend.redis.script_exists(SCRIPTS.flagged_sha["trim"])
            assert exists == [True]
    finally:
        await backend.aclose()
        await redis.aclose()


async def test_worker_rides_out_a_full_redis_and_finishes_every_accepted_run(
    redis_factory: RedisFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Under a 10-way fan-out load Redis fills up; while it is full (longer than two
    visibility timeouts) submits are refused with RedisFull and the worker's claims,
    completions and housekeeping are refused too. Once memory is freed, every
    accepted run completes, no message stays pending and none is dead-lettered."""
    server = redis_factory(appendonly=False, extra_args=["--maxmemory-policy", "noeviction"])
    gate = asyncio.Event()
    flow = fan_flow(gate)
    r = aioredis.Redis.from_url(server.url)
    accepted: list[str] = []
    refused = 0
    caplog.set_level(logging.INFO, logger="aioflow")
    try:
        async with running([flow], server.url, concurrency=20, visibility_timeout=1.0) as stack:
            for i in range(150):
                accepted.append(await stack.client.submit(flow, i))
            worker = stack.workers[0]

            async def legs_running() -> bool:
                return len(worker._inflight) >= 20  # every slot holds a leg at the gate

            await wait_until(legs_running, timeout=10, what="the worker's slots to fill")
            # full while work is in flight: the running legs finish only now
            await make_full(r)
            gate.set()
            for i in range(20):
                try:
                    accepted.append(await stack.client.submit(flow, 1000 + i))
                except aioflow.RedisFull:
                    refused += 1
            assert refused == 20, "a full Redis accepted a submit"

            async def refused_in_the_worker() -> bool:
                return worker.metrics.redis_full > 0

            await wait_until(refused_in_the_worker, timeout=10, what="the worker to meet OOM")

            # stay full until completions have been refused for longer than two
            # visibility timeouts: the leases of what is in flight must hold meanwhile
            async def refused_long() -> bool:
                since = worker._completing.since
                return since is not None and time.monotonic() - since > 2.0

            await wait_until(refused_long, timeout=15, what="completions refused for 2 s")
            dead_before: Any = await r.xlen(f"{keys.tag('fan', 0)}:dlq")
            await r.config_set("maxmemory", 0)

            async def all_finished() -> bool:
                pipe = r.pipeline(transaction=False)
                for rid in accepted:
                    pipe.hget(keys.RunId.parse(rid).run, "status")
                statuses = await pipe.execute()
                return all(s == b"completed" for s in statuses)

            await wait_until(all_finished, timeout=60, what="every accepted run to complete")
            for rid in accepted[:5]:
                assert await stack.client.result(rid, timeout=5) == LEGS * 2000

            async def nothing_pending() -> bool:
                summary: Any = await r.xpending(keys.stream("fan", 0), keys.GROUP)
                return int(summary["pending"]) == 0

            await wait_until(nothing_pending, timeout=10, what="an empty PEL")
            assert dead_before == 0
            assert await r.xlen(f"{keys.tag('fan', 0)}:dlq") == 0
    finally:
        await r.aclose()
    full_warnings = [
        rec
        for rec in caplog.records
        if rec.levelno == logging.WARNING and "Redis is full" in rec.getMessage()
    ]
    # one warning per episode and duty, not one per attempt
    assert 1 <= len(full_warnings) <= 12, [x.getMessage() for x in full_warnings]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was logged"
