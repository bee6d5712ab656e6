"""The completer: applies the outcomes of the worker's nodes in batches.

A node's outcome is queued (:meth:`Completer.queue`, the callback the executor
and the limits are given) and the completer task applies what is queued with
one ``complete`` script call per stream, which acks the message, applies the
node's operations and fences a completion whose message is no longer pending
for this worker. What is queued while a batch is on its way joins the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from aioflow.core import codec
from aioflow.observability.metrics import WorkerMetrics
from aioflow.store.outage import Episode
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import Conn

from .limits import Limits
from .transient import TRANSIENT
from .vertex import Msg
from .vertex import marker as default_marker

log = logging.getLogger("aioflow.worker")


class Host(Protocol):
    """What the completer needs of the worker."""

    consumer: str
    clock: Callable[[], float]
    ttl_ms: int
    fast: Conn
    metrics: WorkerMetrics
    limits: Limits

    def _release(self, m: Msg) -> None: ...


class Completer:
    """Queues node outcomes and applies them in batches (:meth:`run` is its task).

    ``completed`` and ``fenced`` count the completions applied and refused;
    ``give_up`` is a drain's last moment to apply them (``None``: no limit)."""

    def __init__(self, worker: Host, *, episode: Episode) -> None:
        self.w = worker
        self.completing = episode
        self.done: list[tuple[Msg, list[Any]]] = []
        self.applying: set[tuple[str, bytes]] = set()  # in the batch on its way
        self.completed = 0  # vertex completions applied (for tests and metrics)
        self.fenced = 0
        self.give_up: float | None = None
        self._event = asyncio.Event()
        self._flushing = False

    def queue(
        self,
        m: Msg,
        ops: list[Any],
        *,
        value: bytes = b"",
        mode: str = "c",
        vstatus: str = "completed",
        marker: str | None = None,
    ) -> None:
        marker = marker or default_marker(m)
        m.vstatus = vstatus
        rec = [m.id, m.uid, marker, mode, value, m.addr, vstatus, len(ops) // 4, *ops]
        self.done.append((m, rec))
        self._event.set()

    def pending(self) -> set[tuple[str, bytes]]:
        """(stream, message id) of the completions queued or on their way."""
        keys = set(self.applying)
        keys.update((m.stream, m.id) for m, _ in self.done)
        return keys

    async def run(self) -> None:
        while True:
            await self._event.wait()
            self._event.clear()
            await self.flush()

    async def flush(self) -> None:
        """Apply queued completions in batches until none is left (one flush at a time;
        what is queued meanwhile joins the next batch of the flush in progress)."""
        if self._flushing:
            return
        self._flushing = True
        try:
            await self._flush_all()
        finally:
            self._flushing = False

    async def _flush_all(self) -> None:
        w = self.w
        while self.done:
            batch, self.done = self.done, []
            by_stream: dict[str, list[tuple[Msg, list[Any]]]] = {}
            for item in batch:
                by_stream.setdefault(item[0].stream, []).append(item)
            self.applying = {(m.stream, m.id) for m, _ in batch}
            try:
                if len(by_stream) == 1:  # the common case: no task per call
                    results = [await self._apply(*next(iter(by_stream.items())))]
                else:
                    results = await asyncio.gather(
                        *(self._apply(s, items) for s, items in by_stream.items())
                    )
            except TRANSIENT as e:
                # completions are idempotent and fenced, and a refused script applied
                # nothing (Redis full): apply them again later
                self.done[:0] = batch
                if self.give_up is not None and time.monotonic() > self.give_up:
                    return  # a drain that cannot wait any longer (see Worker._drain)
                await asyncio.sleep(self.completing.failed(e))
                continue
            finally:
                self.applying = set()
            self.completing.ok()
            for items, res in zip(by_stream.values(), results, strict=True):
                for (m, rec), r in zip(items, res, strict=True):
                    if r == b"fenced":
                        self.fenced += 1
                        log.warning(
                            "completion of vertex %s of run %s refused: no longer pending for "
                            "this worker (reclaimed by another, or applied by an earlier attempt)",
                            m.addr,
                            m.rid,
                        )
                    elif r != b"dup":  # ok, or it ended the run
                        self.completed += 1
                        if r == b"failed":
                            _log_failure(m, rec)
                    w.metrics.done(m, r)
                    w.limits.done(m, fenced=r == b"fenced")
                    w._release(m)

    async def _apply(self, stream: str, items: list[tuple[Msg, list[Any]]]) -> Any:
        w = self.w
        args: list[Any] = [w.consumer, repr(w.clock()), w.ttl_ms]
        for _, rec in items:
            args += rec
        return await SCRIPTS.call(w.fast, "complete", stream, *args)


def _log_failure(m: Msg, rec: list[Any]) -> None:
    """Log a run that this completion failed, with what failed it."""
    err: dict[str, Any] = {}
    ops = rec[8:]
    for j in range(0, len(ops) - 3, 4):
        if ops[j] == "X":
            with contextlib.suppress(Exception):
                err = codec.loads(ops[j + 1])
            break
    log.warning(
        "run %s failed: vertex %s raised %s: %s (attempt %s)",
        m.rid,
        err.get("vertex", m.addr),
        err.get("type", "?"),
        err.get("message", ""),
        err.get("attempts", m.attempt),
        extra={
            "flow": m.flow.name,
            "run_id": str(m.rid),
            "vertex": err.get("vertex", m.addr),
            "attempt": m.attempt,
        },
    )
