"""SIGTERM drains a worker: it stops reading, lets running nodes finish within the grace
period or hands them back, exits 0, and another worker completes every run."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest
from redis.asyncio import Redis

import aioflow
from tests.chaos import apps
from tests.chaos.harness import (
    DoneCounter,
    Workers,
    audit_diamond,
    entries_added,
    exec_counts,
    pel_empty,
    pending_of,
    run_fields,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.chaos

HANDED_BACK = re.compile(r"handing back (\d+) running vertices")


async def _finish_all(
    client: aioflow.Client, redis: Redis, inputs: dict[str, int], *, handed_back: int
) -> None:
    ids = list(inputs)
    results = await asyncio.gather(
        *(client.result(rid, timeout=20) for rid in ids), return_exceptions=True
    )
    wrong = {
        rid: res
        for rid, res in zip(ids, results, strict=True)
        if res != apps.diamond_result(inputs[rid])
    }
    assert wrong == {}
    await wait_until(lambda: pel_empty(redis, "diamond"), timeout=10, what="empty PEL")
    rep = await audit_diamond(redis, inputs, handed_back=handed_back)
    assert (rep.completed, rep.lost, rep.over_joined) == (len(ids), [], []), rep
    assert (rep.extra_entries, rep.dlq, rep.pel) == (0, 0, 0), rep


async def test_sigterm_under_load_exits_0_within_grace(
    redis_url: str, redis: Redis, workers: Workers
) -> None:
    n, grace = 300, 5.0
    w1 = workers.start(redis_url, concurrency=100, grace=grace, env={"CHAOS_SLEEP": "0.2"})
    await w1.ready()
    async with (
        aioflow.Client(redis_url) as client,
        DoneCounter(redis_url, "diamond") as done,
    ):
        ids = list(await asyncio.gather(*(client.submit("diamond", i) for i in range(n))))
        inputs = dict(zip(ids, range(n), strict=True))

        async def loaded() -> bool:
            return done.finished >= 20 and await pending_of(redis, "diamond", w1.pid) >= 50

        await wait_until(loaded, timeout=20, what="w1 busy")
        t0 = time.monotonic()
        w1.signal(signal.SIGTERM)
        assert await w1.exited(timeout=grace + 5) == 0
        assert time.monotonic() - t0 < grace
        assert done.finished < n  # work was left when it stopped
        # it holds nothing: every message it had read was completed or handed back
        assert await pending_of(redis, "diamond", w1.pid) == 0
        m = HANDED_BACK.search(w1.log())
        handed_back = int(m.group(1)) if m else 0
        assert handed_back == 0  # 0.2 s nodes all finish within a 5 s grace

        workers.start(redis_url, concurrency=100, env={"CHAOS_SLEEP": "0.2"})
        await _finish_all(client, redis, inputs, handed_back=handed_back)
        # a clean drain redelivers nothing: every vertex ran exactly once
        execs = await exec_counts(redis, ids)
        assert {rid: c for rid, c in execs.items() if set(c.values()) != {1} or len(c) != 4} == {}
        await wait_until(lambda: done.finished >= n, timeout=10, what="every notification")
        assert done.repeated() == {}


async def test_sigterm_hands_back_nodes_longer_than_grace(
    redis_url: str, redis: Redis, workers: Workers
) -> None:
    n, grace = 40, 1.0
    w1 = workers.start(redis_url, concurrency=n, grace=grace, env={"CHAOS_SLEEP": "30"})
    await w1.ready()
    async with aioflow.Client(redis_url) as client:
        ids = list(await asyncio.gather(*(client.submit("diamond", i) for i in range(n))))
        inputs = dict(zip(ids, range(n), strict=True))

        async def all_started() -> bool:
            raw = await redis.hget(apps.TOTAL, "a")
            return int(raw or 0) == n

        await wait_until(all_started, timeout=10, what="w1 running every entry node")
        t0 = time.monotonic()
        w1.signal(signal.SIGTERM)
        assert await w1.exited(timeout=grace + 5) == 0
        assert time.monotonic() - t0 < grace + 2.0
        assert f"handing back {n} running vertices" in w1.log()
        assert await pending_of(redis, "diamond", w1.pid) == 0
        assert await entries_added(redis, "diamond") == 2 * n  # n entries, n hand-backs

        workers.start(redis_url, concurrency=n, env={"CHAOS_SLEEP": "0"})
        await _finish_all(client, redis, inputs, handed_back=n)
        execs = await exec_counts(redis, ids)
        assert all(c == {"a": 2, "b": 1, "c": 1, "d": 1} for c in execs.values()), execs
        # a hand-back does not count as an attempt
        attempts = await run_fields(redis, ids, ["a:a"])
        assert all(v == [b"1"] for v in attempts.values()), attempts
