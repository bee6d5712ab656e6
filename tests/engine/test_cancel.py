"""cancel_and_wait ends a task for sure: one that lets a cancel go by (as a loop
talking to Redis through redis-py can, on Python 3.11) is cancelled again."""

from __future__ import annotations

import asyncio
import random

from redis.asyncio import Redis

from aioflow.app import connect
from aioflow.core.aio import cancel_and_wait
from tests.helpers import wait_until


async def test_a_task_that_drops_a_cancel_is_cancelled_again() -> None:
    dropped = 0

    async def stubborn() -> None:
        nonlocal dropped
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if dropped == 2:
                    raise
                dropped += 1  # as wait_for does when its inner future just finished
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)  # let it start
    async with asyncio.timeout(5):
        await cancel_and_wait([task], every=0.01)
    assert task.cancelled() and dropped == 2


async def test_results_and_exceptions_stay_on_the_tasks() -> None:
    async def fails() -> None:
        raise ValueError("mine")

    async def returns() -> int:
        return 7

    done, failing = asyncio.create_task(returns()), asyncio.create_task(fails())
    await asyncio.wait([done, failing])
    await cancel_and_wait([done, failing])
    assert done.result() == 7
    assert isinstance(failing.exception(), ValueError)


async def test_loops_on_redis_py_end_whenever_the_cancel_lands(redis_url: str) -> None:
    """A loop of pipelined redis-py commands, cancelled at random points of its
    round trips, 40 times: each ends within the deadline."""
    redis: Redis = connect(redis_url)
    rounds = 0

    async def refreshing() -> None:
        nonlocal rounds
        while True:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.zadd("seen", {"v": 1})
                pipe.zadd("seen:2", {"v": 1})
                await pipe.execute()
            rounds += 1
            await asyncio.sleep(0)

    rng = random.Random(7)
    try:
        for _ in range(40):
            before = rounds
            task = asyncio.create_task(refreshing())
            # the loop is talking to Redis: then the cancel lands at a random point
            await wait_until(lambda: rounds > before, what="a round trip")  # noqa: B023
            await asyncio.sleep(rng.random() * 0.003)
            async with asyncio.timeout(5):
                await cancel_and_wait([task])
            assert task.done()
    finally:
        await redis.aclose()
