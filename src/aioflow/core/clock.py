"""The clock seam: where aioflow reads time and waits for it to pass.

A clock is a callable returning epoch seconds (``time.time`` by default), given
as ``Worker(clock=...)`` and ``Engine(clock=...)``; retry due times, delayed
starts and schedule ticks are all read from it. A clock that does not move by
itself (:class:`FakeClock`) also says when it moved, so what waits on it
(the delayed-message mover, the scheduler) wakes as soon as a test advances it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["FakeClock", "wait"]


@runtime_checkable
class SteppedClock(Protocol):
    """A clock moved by hand: ``changed()`` returns once it has been moved."""

    def __call__(self) -> float: ...

    async def changed(self) -> None: ...


async def wait(
    clock: Callable[[], float],
    event: asyncio.Event | None,
    seconds: float | None,
    *,
    poll: float,
    since: float | None = None,
) -> None:
    """Return when ``event`` is set, ``seconds`` have passed on ``clock``, or
    ``poll`` real seconds have passed (what other processes wrote is noticed
    within ``poll``), whichever comes first. A :class:`SteppedClock` wakes this
    whenever it is moved; the caller reads the clock again and decides.
    ``since`` is the reading the caller decided on: a stepped clock moved after
    it (while the caller was busy) returns at once instead of being missed."""
    if not isinstance(clock, SteppedClock):
        timeout = poll if seconds is None else max(0.0, min(seconds, poll))
        if event is None:
            await asyncio.sleep(timeout)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
        return
    if seconds is not None and seconds <= 0:
        await asyncio.sleep(0)
        return
    read = clock() if since is None else since
    waits: list[asyncio.Future[Any]] = [
        asyncio.ensure_future(clock.changed()),
        asyncio.ensure_future(asyncio.sleep(poll)),
    ]
    if event is not None:
        waits.append(asyncio.ensure_future(event.wait()))
    try:
        await asyncio.sleep(0)  # changed() listens from here on
        if clock() != read:  # moved before it listened
            return
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


class FakeClock:
    """A clock that moves only when told: ``clock.advance(seconds)``.

    Pass it as ``Worker(clock=...)`` and ``Engine(clock=...)`` (the
    ``aioflow_clock`` fixture does) and retries, delayed starts and schedule
    ticks happen when the test advances it, without sleeping: advancing wakes
    the worker's delayed-message mover and the scheduler at once. ``now`` may
    also be set directly. It starts at ``start`` (2026-01-01T00:00:00Z).
    """

    def __init__(self, start: float = 1_767_225_600.0) -> None:
        self._now = float(start)
        self._moved: list[asyncio.Future[None]] = []

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        return self._now

    @now.setter
    def now(self, value: float) -> None:
        self._now = float(value)
        moved, self._moved = self._moved, []
        for fut in moved:
            loop = fut.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, fut)

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward (not back); answers the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go back: advance by seconds >= 0")
        self.now = self._now + seconds
        return self._now

    async def changed(self) -> None:
        """Return the next time the clock is moved."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._moved.append(fut)
        try:
            await fut
        finally:
            with contextlib.suppress(ValueError):
                self._moved.remove(fut)

    async def sleep(self, seconds: float) -> None:
        """Return once the clock has been advanced ``seconds`` past now."""
        deadline = self._now + seconds
        while self._now < deadline:
            await self.changed()

    def __repr__(self) -> str:
        return f"FakeClock({self._now!r})"


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
