"""Ending background tasks for sure.

On Python 3.11 a cancellation can be lost: ``asyncio.wait_for`` returns the
inner result, and drops the cancel, when the inner awaitable finished in the
same loop pass as the cancel arrived (CPython gh-86296, fixed in 3.12 by
building ``wait_for`` on ``asyncio.timeout``). redis-py 8 sends every command
through ``wait_for`` (its default ``socket_timeout`` is 5 s), so a loop cancelled
while it talks to Redis can miss the cancel and go on forever: a shutdown that
cancels such a task once and awaits it hangs. Measured here on a loop of
pipelined commands, one cancel in four was lost.

So aioflow cancels its own tasks level-triggered, as trio and anyio deliver a
cancellation: again and again until the task has ended. aioflow's own waits use
``asyncio.timeout``, which does not lose a cancel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], *, every: float = 0.05) -> None:
    """Cancel ``tasks`` and return once each has ended, cancelling again every
    ``every`` seconds those still running. Their results and exceptions are left
    on them for the caller to collect."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
