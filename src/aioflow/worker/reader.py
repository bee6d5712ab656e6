"""A reader: the reads of one Redis master (the one server when not a cluster).

The worker runs one per master (:class:`~aioflow.worker.readers.Readers` starts
them and regroups them when the slot map changes); they share the free slots.
A reader sweeps all its streams with non-blocking reads in one write (one
XREADGROUP per slot: a cluster refuses multi-slot commands even within one
master) while they have work, and only when a sweep finds nothing does it
block, one read per slot on connections of their own. A slot is hot (swept
without blocking, all hot slots in one write) while its reads find messages,
else cold (one blocking read of its own, holding no slot) until that read
brings a full COUNT. A blocked read holds no slot: what it brings beyond the
free slots is parked (already ours in Redis, its lease renewed) until a slot
frees.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from aioflow.core.aio import cancel_and_wait
from aioflow.definitions import priority
from aioflow.store import keys
from aioflow.store.conn import Lean, RedisPyLean
from aioflow.store.outage import REDIS_ERRORS, Episode
from aioflow.store.topology import Addr, Backend, Conn, Router, as_text

from .health import BLOCK, READ_GRACE


class Shared(Protocol):
    """What the readers of all masters share (:class:`~aioflow.worker.readers.Readers`)."""

    reserved: int  # slots held by reads in progress
    busy_readers: int  # readers whose last read found messages
    prio_tick: int
    backoff: float
    last_read: float
    parked: dict[tuple[str, bytes], Any]
    busy: dict[str, set[str]]
    reading: Episode

    def hold(self, batches: Any) -> list[tuple[str, bytes]]: ...
    def unhold(self, held: list[tuple[str, bytes]]) -> None: ...
    def slots_freed(self) -> None: ...
    async def take(self, stream: str, entries: list[Any]) -> None: ...
    async def read_failed(self, e: BaseException) -> None: ...
    async def refresh(self) -> None: ...


class Host(Protocol):
    """What a reader needs of the worker."""

    consumer: str
    fast: Conn
    backend: Backend
    _stopping: asyncio.Event
    _slot_event: asyncio.Event
    _loop: asyncio.AbstractEventLoop

    def _free(self) -> int: ...
    def _start(self, stream: str, entries: list[Any], *, reclaimed: bool) -> Awaitable[None]: ...


class Reader:
    """Reads the streams of the master at ``addr``: ``groups`` are its streams by
    slot, ``epoch`` the slot map they were grouped by (the reader returns when it
    changes), ``readers`` how many masters share the free slots."""

    def __init__(
        self,
        shared: Shared,
        worker: Host,
        addr: Addr,
        groups: list[list[str]],
        *,
        epoch: int,
        readers: int,
    ) -> None:
        self.shared = shared
        self.w = worker
        self.addr = addr
        self.groups = groups
        self.epoch = epoch
        self.readers = readers
        self.consumer = worker.consumer

    async def run(self) -> None:
        rd, w = self.shared, self.w
        addr, groups, epoch, readers = self.addr, self.groups, self.epoch, self.readers
        sweeper = self._connect()
        conns: list[Lean | RedisPyLean | None] = [None] * len(groups)
        if len(groups) == 1:  # a hot slot has no blocking read: one connection is enough
            conns[0] = sweeper
        waits: dict[int, tuple[asyncio.Task[int], int]] = {}  # slot: its read, COUNT
        woke = asyncio.Event()  # a blocking read ended
        hot = set(range(len(groups)))  # a first sweep finds out
        slot_of = {s: i for i, g in enumerate(groups) for s in g}
        nstreams = len(slot_of)
        busy = False  # some slot is hot (counted in busy_readers)
        try:
            while not w._stopping.is_set() and w.fast.epoch == epoch:
                free = w._free() - rd.reserved - len(rd.parked)
                if free <= 0:
                    w._slot_event.clear()
                    await w._slot_event.wait()
                    continue
                if readers == 1:
                    share = free
                elif busy:  # the readers that found messages last time share the free slots
                    share = max(1, free // max(1, rd.busy_readers))
                else:
                    share = max(1, free // readers)
                if hot:
                    chosen = [groups[i] for i in sorted(hot)]
                    swept = await self._sweep(sweeper, addr, chosen, slot_of, share)
                    if swept is None:
                        await rd.refresh()
                        continue
                    read, found = swept
                    # cold: read this time and nothing found (a share smaller than the
                    # streams reads only some of them)
                    hot -= {
                        i
                        for i in hot
                        if not found.intersection(groups[i]) and read.intersection(groups[i])
                    }
                if busy != bool(hot):
                    busy = bool(hot)
                    rd.busy_readers += 1 if busy else -1
                # cold slots: a blocking read each (unless one is out already). Each
                # may bring the whole share (a COUNT of share / nstreams made a trickle
                # over several slots read two at a time, and every "full" read turned
                # its slot hot for a sweep that found nothing), all of them together
                # at most twice the share; what exceeds the free slots is parked
                for i, g in enumerate(groups):
                    if i not in hot and i not in waits:
                        conn = conns[i] = conns[i] or self._connect()
                        count = max(1, min(share // len(g), 2 * share // nstreams))
                        t = w._loop.create_task(self._wait_group(conn, g, count))
                        t.add_done_callback(lambda _: woke.set())
                        waits[i] = (t, count)
                if hot:
                    continue  # sweep again with what is still free
                while not any(t.done() for t, _ in waits.values()):
                    woke.clear()
                    await woke.wait()
                failed = False
                for i, (t, count) in list(waits.items()):
                    if t.done():
                        del waits[i]
                        n = t.result()
                        failed = failed or n < 0
                        if n >= count:  # a full COUNT: more may wait there
                            hot.add(i)
                if failed:
                    await rd.refresh()
        finally:
            if busy:
                rd.busy_readers -= 1
            # a blocked read ends within its BLOCK: let it land rather than lose what
            # it brings to the visibility timeout (unless the worker is stopping)
            tasks = [t for t, _ in waits.values()]
            if tasks and not w._stopping.is_set():
                await asyncio.wait(tasks, timeout=2.0)
            # a cancelled read may be opening its connection: let it end before closing
            await cancel_and_wait(tasks)
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in {id(c): c for c in (sweeper, *conns) if c is not None}.values():
                await _close(c)

    async def _sweep(
        self,
        conn: Lean | RedisPyLean,
        addr: Addr,
        groups: list[list[str]],
        slot_of: dict[str, int],
        share: int,
    ) -> tuple[set[str], set[str]] | None:
        """Non-blocking reads of ``groups`` (streams by slot, ``slot_of`` saying
        whose) on one master, ``share`` slots shared by priority (see
        :mod:`aioflow.definitions.priority`), sent in one write; starts what they bring and
        answers the streams read and those that had messages (None: they failed)."""
        rd, w = self.shared, self.w
        by_priority: dict[str, list[str]] = {}
        for g in groups:
            for s in g:
                by_priority.setdefault(priority.of_stream(s), []).append(s)
        busy = rd.busy.setdefault(f"{addr[0]}:{addr[1]}", set())
        plan = priority.plan_reads(share, by_priority, busy, rd.prio_tick)
        rd.prio_tick += 1
        commands: list[tuple[Any, ...]] = []
        prios: list[str] = []
        read: set[str] = set()
        for r in plan:
            read.update(r.streams)
            per_slot: dict[int, list[str]] = {}
            for s in r.streams:
                per_slot.setdefault(slot_of[s], []).append(s)
            for ss in per_slot.values():
                commands.append(self._xread(r.count, ss))
                prios.append(r.priority)
        rd.reserved += share
        try:
            replies = await conn.execute_many(commands, raise_errors=False)
        except REDIS_ERRORS as e:
            rd.reserved -= share
            rd.slots_freed()
            await rd.read_failed(e)
            return None
        failed = False
        got = 0
        found: set[str] = set()
        busy.clear()
        for p, resp in zip(prios, replies, strict=True):
            if isinstance(resp, BaseException):
                failed = True
                await rd.read_failed(resp)
            elif resp:
                busy.add(p)
                for stream, entries in resp:
                    found.add(as_text(stream))
                    got += len(entries)
        rd.reserved -= share - got
        if not failed:
            rd.last_read = time.monotonic()  # an answered read, empty or not
            rd.reading.ok()
        if got:
            rd.backoff = 0.05
        held = rd.hold(
            (as_text(stream), entries)
            for resp in replies
            if resp and not isinstance(resp, BaseException)
            for stream, entries in resp
        )
        try:
            for resp in replies:
                if resp and not isinstance(resp, BaseException):
                    for stream, entries in resp:
                        await w._start(as_text(stream), entries, reclaimed=False)
        finally:
            rd.unhold(held)
            rd.reserved -= got
            rd.slots_freed()
        return None if failed and not got else (read, found)

    async def _wait_group(self, conn: Lean | RedisPyLean, streams: list[str], count: int) -> int:
        """A blocking read of one slot's streams: how many messages it brought
        (-1: it failed). What exceeds the free slots on arrival is parked."""
        rd = self.shared
        try:
            resp: Any = await conn.execute(
                *self._xread(count, streams, block_ms=int(BLOCK * 1000)),
                timeout=BLOCK + READ_GRACE,
            )
        except (ResponseError, *REDIS_ERRORS) as e:
            await rd.read_failed(e)
            return -1
        rd.backoff = 0.05
        # an empty blocking read is a read: the worker listens (worker --health)
        rd.last_read = time.monotonic()
        rd.reading.ok()
        got = 0
        held = rd.hold((as_text(stream), entries) for stream, entries in resp or ())
        try:
            for stream, entries in resp or ():
                got += len(entries)
                await rd.take(as_text(stream), entries)
        finally:
            rd.unhold(held)
        return got

    def _xread(
        self, count: int, streams: list[str], block_ms: int | None = None
    ) -> tuple[Any, ...]:
        block = ("BLOCK", block_ms) if block_ms is not None else ()
        return (
            "XREADGROUP",
            "GROUP",
            keys.GROUP,
            self.consumer,
            "COUNT",
            count,
            *block,
            "STREAMS",
            *streams,
            *[">"] * len(streams),
        )

    def _connect(self) -> Lean | RedisPyLean:
        # reads get connections of their own; scripts share the worker's fast
        fast, addr = self.w.fast, self.addr
        if isinstance(fast, Router):
            t = fast.lean_template()
            return Lean(
                addr[0],
                addr[1],
                db=t.db,
                username=t.username,
                password=t.password,
                connect_timeout=t.connect_timeout,
                timeout=t.timeout,
                ssl=t.endpoint.ssl,  # TLS and unix sockets as the seed has them
                path=t.endpoint.path if addr == (t.host, t.port) else None,
            )
        given = self.w.backend.given
        assert isinstance(given, Redis)
        return RedisPyLean(given.client())


async def _close(conn: Lean | RedisPyLean) -> None:
    with contextlib.suppress(*REDIS_ERRORS):
        await conn.aclose()
        if isinstance(conn, RedisPyLean):
            await conn.redis.aclose()
