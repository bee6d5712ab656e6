"""Schedules on a real Redis Cluster: state keys in slots of their own, single-key
commands only, one run per tick whatever the number of tickers."""

from __future__ import annotations

import asyncio

from aioflow.engine.engine import register
from aioflow.engine.schedule import Scheduler
from aioflow.store import keys
from aioflow.store.topology import key_slot
from aioflow.testing import FakeClock, Kit
from tests.engine.test_schedules import MIN, T0, finished, last_done, rid, run_keys, ticker
from tests.helpers import wait_until


async def test_schedules_tick_pause_and_resume_on_a_cluster(cluster_url: str) -> None:
    flow = ticker("clustered")
    flow.schedule("minutely", every=60, data=7)
    assert key_slot(keys.schedules("clustered")) != key_slot(keys.stream("clustered", 0))
    clock = FakeClock(T0 + 30)
    async with Kit(cluster_url, clock=clock) as kit:
        await kit.worker(flow)
        await kit.client.engine.start()
        redis = kit.client.engine.redis  # cluster-aware once the engine has started
        parts = (await kit.client.engine.flow_info("clustered")).partitions
        assert parts > 1  # "auto" on three masters: runs of ticks spread over them

        async def ready() -> bool:
            return await last_done(redis, "clustered", "minutely") is not None

        await wait_until(ready, what="schedule state")
        clock.advance(30)
        assert await finished(kit, rid("clustered", "minutely", T0 * 1000 + MIN, parts)) == 7

        st = await kit.client.pause_schedule("clustered", "minutely")
        assert st.paused
        st = await kit.client.resume_schedule("clustered", "minutely")
        assert not st.paused and st.next_tick == T0 + 120

        # five more tickers on the same tick: still one run
        tickers = [Scheduler(kit.redis, ["clustered"], clock) for _ in range(5)]
        try:
            clock.now = T0 + 120
            await asyncio.gather(*(t.tick() for t in tickers))
        finally:
            for t in tickers:
                await t.aclose()
        assert await finished(kit, rid("clustered", "minutely", T0 * 1000 + 2 * MIN, parts)) == 7
        assert await run_keys(kit, "clustered") == {
            rid("clustered", "minutely", T0 * 1000 + n * MIN, parts) for n in (1, 2)
        }


async def test_register_then_tick_from_a_plain_node_url(cluster_url: str) -> None:
    """The gateway path: registration and ticking without a worker."""
    flow = ticker("plain")
    flow.schedule("s", every=60)
    clock = FakeClock(T0 + 30)
    async with Kit(cluster_url, clock=clock) as kit:
        await kit.client.engine.start()
        await register(kit.client.engine.redis, [flow], fast=kit.client.engine.fast)
        sched = Scheduler(kit.redis, ["plain"], clock)
        try:
            assert await sched.tick() == 30.001
            clock.now = T0 + 60
            await sched.tick()
            assert sched.fired == 1
        finally:
            await sched.aclose()
