"""SIGTERM on a worker whose Redis link has stalled: it still exits, within its grace
plus two Redis timeouts, instead of retrying its last completions forever; what it
could not apply stays pending and another worker finishes the run."""

from __future__ import annotations

import asyncio
import signal
import time

import redis.asyncio as aioredis

import aioflow
from tests.chaos import apps
from tests.chaos.harness import Workers
from tests.faultproxy import FaultProxy
from tests.helpers import wait_until

RT = 1.0  # the stalled worker's redis_timeout
GRACE = 1.0


async def test_sigterm_on_a_stalled_link_exits_and_the_run_finishes_elsewhere(
    redis_url: str, redis: aioredis.Redis, workers: Workers
) -> None:
    async with asyncio.timeout(60), FaultProxy.to(redis_url) as proxy:
        w1 = workers.start(
            proxy.url,
            concurrency=10,
            visibility_timeout=2.0,
            grace=GRACE,
            env={"AIOFLOW_REDIS_TIMEOUT": str(RT), "CHAOS_SLEEP": "0.5"},
            counter_url=redis_url,
        )
        await w1.ready()
        async with aioflow.Client(redis_url) as client:
            rid = await client.submit("diamond", 3)

            async def started() -> bool:
                return bool(await redis.hget(f"{apps.EXEC_PREFIX}{rid}", "a"))

            await wait_until(started, timeout=10, what="w1 to start the run")
            proxy.partition()
            stopped_at = time.monotonic()
            w1.signal(signal.SIGTERM)
            # grace, then two Redis timeouts for the last completions, plus a few
            # deadlines for the hand-back and closing on a dead link, and start-up slack
            bound = GRACE + 2 * RT + 4 * RT + 5.0
            code = await w1.exited(timeout=bound + 10)
            took = time.monotonic() - stopped_at
            assert took < bound, f"w1 took {took:.1f} s to stop on a stalled link"
            assert code == 0, w1.log()[-3000:]

            # what w1 held is still pending: a worker on a good link finishes the run
            w2 = workers.start(redis_url, concurrency=10, visibility_timeout=2.0)
            await w2.ready()
            assert await client.result(rid, timeout=20) == apps.diamond_result(3)
