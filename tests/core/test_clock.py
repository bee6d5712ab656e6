"""clock.wait on a FakeClock: a move is never missed, whenever it happens relative to
the wait (before it listened, or between the caller's reading and the call)."""

from __future__ import annotations

import asyncio

from aioflow.core.clock import FakeClock, wait

POLL = 30.0  # a missed move would be noticed only after this many real seconds


async def test_a_move_while_waiting_wakes_the_wait() -> None:
    clock = FakeClock()
    task = asyncio.create_task(wait(clock, None, 60, poll=POLL))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()
    clock.advance(1)
    async with asyncio.timeout(2):
        await task


async def test_a_move_before_the_wait_listens_is_not_missed() -> None:
    clock = FakeClock()
    task = asyncio.create_task(wait(clock, None, 60, poll=POLL))
    clock.advance(1)  # the task has not run yet: it reads the clock after this
    await asyncio.sleep(0)  # it starts, then listens
    clock.advance(1)  # ...and this move lands between its start and its listening
    async with asyncio.timeout(2):
        await task


async def test_a_move_after_the_callers_reading_returns_at_once() -> None:
    clock = FakeClock()
    read = clock()
    clock.advance(5)  # moved while the caller was busy deciding how long to wait
    async with asyncio.timeout(2):
        await wait(clock, None, 60, poll=POLL, since=read)


async def test_without_a_move_the_wait_lasts() -> None:
    clock = FakeClock()
    task = asyncio.create_task(wait(clock, None, 60, poll=POLL, since=clock()))
    done, _ = await asyncio.wait([task], timeout=0.2)
    assert not done
    task.cancel()
