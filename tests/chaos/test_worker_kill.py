"""A worker dies (SIGKILL) or stalls (SIGSTOP) mid-node: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import re
import signal

import pytest
from redis.asyncio import Redis

import aioflow
from tests.chaos import apps
from tests.chaos.harness import (
    REFUSED,
    DoneCounter,
    Workers,
    audit_diamond,
    entries_added,
    exec_counts,
    held_by,
    pel_count,
    pel_empty,
    pending_of,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.chaos


async def test_sigkill_worker_holding_100_in_flight(
    redis_url: str, redis: Redis, workers: Workers
) -> None:
    n = 500
    w1 = workers.start(redis_url, concurrency=150, env={"CHAOS_SLEEP": "0.2"})
    await w1.ready()
    async with (
        aioflow.Client(redis_url) as client,
        DoneCounter(redis_url, "diamond") as done,
    ):
        ids = list(await asyncio.gather(*(client.submit("diamond", i) for i in range(n))))
        inputs = dict(zip(ids, range(n), strict=True))

        async def loaded() -> bool:
            return done.finished >= 25 and await pending_of(redis, "diamond", w1.pid) >= 100

        await wait_until(loaded, timeout=20, what="25 runs done and 100 vertices held by w1")
        w1.signal(signal.SIGKILL)
        assert w1.proc.wait() == -signal.SIGKILL
        held = await held_by(redis, "diamond", w1.pid)  # frozen: its owner is dead
        assert len(held) >= 100
        assert done.finished < n

        w2 = workers.start(redis_url, concurrency=200, env={"CHAOS_SLEEP": "0.2"})
        results = await asyncio.gather(
            *(client.result(rid, timeout=25) for rid in ids), return_exceptions=True
        )
        wrong = {
            rid: res
            for rid, res in zip(ids, results, strict=True)
            if res != apps.diamond_result(inputs[rid])
        }
        assert wrong == {}
        assert w2.running

        await wait_until(lambda: pel_empty(redis, "diamond"), timeout=10, what="empty PEL")
        rep = await audit_diamond(redis, inputs)
        assert (rep.completed, rep.lost, rep.over_joined) == (n, [], [])
        assert (rep.extra_entries, rep.dlq, rep.pel) == (0, 0, 0), rep

        await wait_until(lambda: done.finished >= n, timeout=10, what="every notification")
        assert done.finished == n
        assert done.repeated() == {}
        assert done.statuses == {"completed": n}

        # at least once; more than once only for what the dead worker held
        execs = await exec_counts(redis, ids)
        for rid in ids:
            for v in apps.DIAMOND_VERTICES:
                ran = execs[rid].get(v, 0)
                if (rid, v) in held:
                    assert 1 <= ran <= 2, (rid, v, ran)
                else:
                    assert ran == 1, (rid, v, ran)
        # the dead worker had started most of what it held: those ran again elsewhere
        assert sum(execs[rid].get(v, 0) == 2 for rid, v in held) >= len(held) // 2


async def test_stalled_worker_late_completion_is_fenced(
    redis_url: str, redis: Redis, workers: Workers
) -> None:
    w1 = workers.start(redis_url, concurrency=10, env={"CHAOS_STALL": "1.5"})
    await w1.ready()
    async with (
        aioflow.Client(redis_url) as client,
        DoneCounter(redis_url, "stall") as done,
    ):
        rid = await client.submit("stall", 7)

        async def slow_started() -> bool:
            return (await exec_counts(redis, [rid]))[rid].get("slow", 0) >= 1

        await wait_until(slow_started, timeout=10, what="w1 to start the slow node")
        w1.signal(signal.SIGSTOP)
        try:
            w2 = workers.start(redis_url, concurrency=10, env={"CHAOS_STALL": "1.5"})
            assert await client.result(rid, timeout=15) == apps.stall_result(7)
        finally:
            w1.signal(signal.SIGCONT)

        # w1 wakes up and either finishes its copy of "slow" and tries to complete it
        # (refused: fenced), or first finds it held the node's lease for longer than the
        # visibility timeout without renewing it, and cancels it (lease_lost)
        refused = re.compile(
            rf"completion of vertex slow of run \S+ {REFUSED}"
            r"|cancelling vertex slow of run \S+: lease not renewed"
        )
        await wait_until(lambda: refused.search(w1.log()) is not None, timeout=10, what="refusal")
        assert w1.running and w2.running

        counts = (await exec_counts(redis, [rid]))[rid]
        assert counts == {"first": 1, "slow": 2, "child": 1}
        assert await entries_added(redis, "stall") == 3  # first, slow, child: once each
        await wait_until(lambda: done.counts[rid] >= 1, timeout=5, what="notification")
        assert done.counts == {rid: 1}
        assert await pel_count(redis, "stall") == 0
        state = await client.state(rid)
        assert state.status is aioflow.Status.COMPLETED
        assert state.result == apps.stall_result(7)
