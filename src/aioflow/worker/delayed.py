"""The mover: puts retries and delayed starts on their streams when they are due.

Each partition keeps one sorted set of delayed messages; the ``move`` script
moves the due ones onto the stream and answers the next due time. A due time
this worker sets (:meth:`Mover.note_due`, the callback the executor and the
limits are given) wakes the mover early; others' are found by polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from aioflow.core.clock import wait as clock_wait
from aioflow.store.outage import Episode
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import Conn

from .transient import TRANSIENT


class Host(Protocol):
    """What the mover needs of the worker."""

    clock: Callable[[], float]
    fast: Conn
    _stopping: asyncio.Event
    _by_priority: dict[str, list[str]]


class Mover:
    """Moves due delayed messages onto their streams (:meth:`run` is its task)."""

    def __init__(self, worker: Host, *, episode: Episode) -> None:
        self.w = worker
        self.moving = episode
        self.next_due = 0.0
        self._due = asyncio.Event()

    def note_due(self, due: float) -> None:
        if self.next_due == 0 or due < self.next_due:
            self.next_due = due
            self._due.set()

    async def run(self) -> None:
        w = self.w
        while not w._stopping.is_set():
            now = w.clock()
            # others' retries and delayed starts are found by polling every 0.25 s
            wait = 0.25 if self.next_due == 0 else max(0.0, min(0.25, self.next_due - now))
            self._due.clear()
            await clock_wait(w.clock, self._due, wait, poll=0.25)
            now = w.clock()
            nxt = 0.0
            for stream in w._by_priority["default"]:  # one delayed set per partition
                try:
                    moved, score = await SCRIPTS.call(w.fast, "move", stream, int(now * 1000), 500)
                except TRANSIENT as e:
                    self.moving.failed(e)
                    nxt = now + 0.5
                    continue
                self.moving.ok()
                s = float(score)
                if s >= 0 and (nxt == 0 or s / 1000 < nxt):
                    nxt = s / 1000
            self.next_due = nxt
