"""The readers: what the reads of all masters share, and what becomes of what
they read.

One :class:`~aioflow.worker.reader.Reader` per master reads its streams; the
readers share the worker's free slots. A read holds (reserves) the slots it may
fill until its messages are claimed; what a blocked read brings beyond the
free slots waits in ``parked`` (already ours in Redis, its lease renewed) and
is started as slots free. Read messages being started are held in
``starting``, so the lost-read recovery never takes them for messages whose
read reply never arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from redis.exceptions import ResponseError

from aioflow.core.aio import cancel_and_wait
from aioflow.core.settings import Settings
from aioflow.definitions.model import Flow
from aioflow.engine.engine import register
from aioflow.store import keys
from aioflow.store.outage import REDIS_ERRORS, Episode
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import Addr, RedisClient

from . import reader
from .health import BLOCK, READ_GRACE
from .reader import Reader
from .vertex import Msg

log = logging.getLogger("aioflow.worker")


class Host(reader.Host, Protocol):
    """What the readers need of the worker."""

    flows: dict[str, Flow]
    settings: Settings
    _stream_list: list[str]
    _inflight: dict[tuple[str, bytes], tuple[Msg, asyncio.Task[None]]]

    @property
    def redis(self) -> RedisClient: ...


class Completions(Protocol):
    def pending(self) -> set[tuple[str, bytes]]: ...


class Readers:
    """Reads the worker's streams (:meth:`run` is its task), parks what does not
    fit the free slots, and recovers deliveries whose read reply was lost.
    ``completions`` answers the messages whose completions are on their way."""

    def __init__(self, worker: Host, *, episode: Episode, completions: Completions) -> None:
        self.w = worker
        self.reading = episode
        self._completions = completions
        self._slot_event = worker._slot_event
        self.reserved = 0  # slots held by reads in progress
        self.busy_readers = 0  # readers whose last read found messages
        # read beyond the free slots (a blocked read holds none): (stream, message
        # id) -> entry, started as slots free, leases renewed meanwhile
        self.parked: dict[tuple[str, bytes], Any] = {}
        self.unparking = False
        self._unpark_task: asyncio.Task[None] | None = None
        self.backoff = 0.05
        self.busy: dict[str, set[str]] = {}  # per master: the priorities it last found work in
        self.prio_tick = 0
        # read, not yet running or parked (being claimed): (stream, id) -> holders
        self.starting: dict[tuple[str, bytes], int] = {}
        self.last_read = 0.0
        self.orphans_due = 0.0  # when to look for deliveries a failed read lost (monotonic)

    async def run(self) -> None:
        """One :class:`Reader` per master, regrouped whenever the slot map changes."""
        w = self.w
        while not w._stopping.is_set():
            epoch = w.fast.epoch
            by_addr: dict[Addr, list[list[str]]] = {}
            for addr, streams in w.fast.read_groups(w._stream_list):
                by_addr.setdefault(addr, []).append(streams)
            readers = [
                asyncio.create_task(
                    Reader(self, w, addr, groups, epoch=epoch, readers=len(by_addr)).run(),
                    name="aioflow-read",
                )
                for addr, groups in by_addr.items()
            ]
            try:
                await asyncio.gather(*readers)
            except Exception:
                # a bug in the read path must not leave a worker that heartbeats and
                # never reads: say so, then read again (what was read and not started
                # stays pending, for the reclaim)
                log.exception("reading failed; starting the readers again")
                await asyncio.sleep(self.backoff)
                self.backoff = min(self.backoff * 2, 2.0)
            finally:
                await cancel_and_wait(readers)
                for r in readers:
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await r

    def hold(self, batches: Any) -> list[tuple[str, bytes]]:
        """Mark read entries as being started (not orphans: see recover_orphans)."""
        held = [(stream, e[0]) for stream, entries in batches for e in entries if e is not None]
        starting = self.starting
        for k in held:
            starting[k] = starting.get(k, 0) + 1
        return held

    def unhold(self, held: list[tuple[str, bytes]]) -> None:
        starting = self.starting
        for k in held:
            n = starting[k] - 1
            if n:
                starting[k] = n
            else:
                del starting[k]

    async def take(self, stream: str, entries: list[Any]) -> None:
        """Start what the free slots allow of ``entries``, park the rest."""
        free = max(0, self.w._free() - self.reserved - len(self.parked))
        now, later = entries[:free], entries[free:]
        for e in later:
            if e is not None:
                self.parked[(stream, e[0])] = e
        if now:
            await self.start_held({stream: now})

    async def start_held(self, batch: dict[str, list[Any]]) -> None:
        """Start read messages, by stream, holding their slots until claimed."""
        w = self.w
        n = sum(len(es) for es in batch.values())
        self.reserved += n
        try:
            for stream, es in batch.items():
                await w._start(stream, es, reclaimed=False)
        finally:
            self.reserved -= n
            self.slots_freed()

    async def unpark(self) -> None:
        """Start parked messages as slots free (run on each release while any wait)."""
        w = self.w
        if self.unparking:
            return
        self.unparking = True
        try:
            while self.parked and not w._stopping.is_set():
                free = w._free() - self.reserved
                if free <= 0:
                    return
                batch: dict[str, list[Any]] = {}
                for key in list(self.parked)[:free]:
                    batch.setdefault(key[0], []).append(self.parked.pop(key))
                held = self.hold(batch.items())
                try:
                    await self.start_held(batch)
                finally:
                    self.unhold(held)
        finally:
            self.unparking = False
            w._slot_event.set()

    async def read_failed(self, e: BaseException) -> None:
        """Say why a read failed, and recreate the groups when they are gone."""
        w = self.w
        text = str(e)
        if not isinstance(e, ResponseError):  # Redis away: the caller backs off
            self.reading.failed(e)
            if not self.orphans_due:  # its reply may have carried messages: look soon
                self.orphans_due = time.monotonic() + self.orphan_idle()
        elif text.startswith("NOGROUP"):
            # the group's creation was lost (a failover before it replicated)
            log.warning("read failed (%s): creating the consumer groups again", e)
            with contextlib.suppress(*REDIS_ERRORS, ResponseError):
                await register(w.redis, w.flows.values(), fast=w.fast)
        elif text.startswith(("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")):
            # a slot of ours moved (failover, resharding): regroup the readers
            log.info("read redirected (%s); refreshing the cluster map", e)
        else:
            log.error("read failed (%s); retrying", e)

    async def refresh(self) -> None:
        await asyncio.sleep(self.backoff)
        self.backoff = min(self.backoff * 2, 2.0)
        with contextlib.suppress(*REDIS_ERRORS):
            await self.w.fast.refresh()

    def orphan_idle(self) -> float:
        # longer than any read's reply may take to arrive (sweeps: redis_timeout)
        return max(BLOCK + READ_GRACE, self.w.settings.redis_timeout) + 1.0

    async def recover_orphans(self) -> None:
        """Start again the messages Redis delivered to this worker whose read reply
        never arrived (the link stalled with the reply on its way, and the connection
        was replaced): pending for this consumer, yet neither running, parked, being
        started nor completing here. Without this they would wait for the visibility
        timeout. Only entries idle for longer than any read may take count, so a
        read still on its way is never mistaken for a lost one."""
        w = self.w
        idle_ms = int(self.orphan_idle() * 1000)
        for stream in w._stream_list:
            if w._stopping.is_set():
                return
            pending: Any = await w.fast.execute(
                "XPENDING", stream, keys.GROUP, "IDLE", idle_ms, "-", "+", 1000, w.consumer
            )
            if not pending:
                continue
            known = self._completions.pending()
            known.update(w._inflight, self.parked, self.starting)
            lost = [p[0] for p in pending if (stream, p[0]) not in known]
            if not lost:
                continue
            # XCLAIM with the same min idle: one renewed or taken meanwhile is skipped
            entries: Any = await w.fast.execute(
                "XCLAIM", stream, keys.GROUP, w.consumer, idle_ms, *lost
            )
            entries = [e for e in entries or () if e and e[1] is not None]
            if entries:
                log.warning(
                    "%d messages on %s were delivered to this worker by a read whose reply "
                    "was lost: starting them again",
                    len(entries),
                    stream,
                )
                await w._start(stream, entries, reclaimed=True)

    async def hand_back_unstarted(self) -> None:
        """Messages delivered to us that no task runs (a read cut short by the
        shutdown) go back to the stream now rather than after visibility_timeout."""
        w = self.w
        for stream in w._stream_list:
            pending: Any = await w.fast.execute(
                "XPENDING", stream, keys.GROUP, "-", "+", 10000, w.consumer
            )
            ids = [p[0] for p in pending or () if (stream, p[0]) not in w._inflight]
            if ids:
                n = await SCRIPTS.call(w.fast, "handback", stream, w.consumer, *ids)
                log.info("handed back %d unstarted messages on %s", n, stream)

    def slots_freed(self) -> None:
        """A slot freed: wake the readers, and start parked messages."""
        self._slot_event.set()
        if self.parked and not self.unparking:
            self._unpark_task = asyncio.get_running_loop().create_task(self.unpark())
