"""A worker shutting down hands back messages delivered to it that it never started."""

from __future__ import annotations

from typing import Any

import aioflow
from aioflow.app import connect
from aioflow.store import keys
from tests.engine_helpers import running


async def test_unstarted_messages_are_handed_back_on_stop(redis_url: str) -> None:
    flow = aioflow.Flow("unstarted")

    @flow.node
    async def work(x: int) -> int:
        return x * 2

    redis = connect(redis_url)
    try:
        # the worker that will stop; visibility_timeout far beyond the test's patience
        w = aioflow.Worker([flow], redis, settings=aioflow.Settings(visibility_timeout=600))
        await w.prepare()
        async with aioflow.Client(redis=redis) as client:
            run_id = await client.submit("unstarted", 21)
            stream = keys.stream("unstarted", 0)
            # a read that lands as the worker shuts down: delivered to w, never started
            got: Any = await redis.xreadgroup(keys.GROUP, w.consumer, {stream: ">"}, count=10)
            assert got and len(got[0][1]) == 1
            w.stop()  # stopped before it runs: it starts nothing, it only shuts down
            await w.run()
            pending = await redis.xpending_range(
                stream, keys.GROUP, min="-", max="+", count=10, consumername=w.consumer
            )
            assert pending == []
            # another worker runs it at once, not after the 600 s visibility timeout
            async with running([flow], redis_url, visibility_timeout=600):
                assert await client.result(run_id, timeout=10) == 42
    finally:
        await redis.aclose()
