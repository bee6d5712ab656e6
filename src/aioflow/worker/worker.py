"""The worker: reads vertex messages in batches, runs node functions as asyncio
tasks bounded by ``concurrency``, and applies completions in batches.

Per batch of messages it makes one round trip to start them (the ``claim``
script: status and dedup checks, attempt count, join inputs) and one to finish
them (the ``complete`` script). Messages are acked only by those scripts.
What running one message means lives in :mod:`aioflow.vertex`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from aioflow.core import codec
from aioflow.core.aio import cancel_and_wait
from aioflow.core.errors import ConfigError
from aioflow.core.settings import Settings
from aioflow.definitions import priority
from aioflow.definitions.model import Flow
from aioflow.definitions.plan import compile_dag
from aioflow.engine.engine import Engine, register
from aioflow.engine.registry import partitions_of
from aioflow.engine.schedule import ticking
from aioflow.observability import metrics, tracing
from aioflow.store import keys
from aioflow.store.conn import Lean, RedisPyLean
from aioflow.store.keys import RunId
from aioflow.store.outage import REDIS_ERRORS, Episode, is_oom
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import Addr, Backend, RedisClient, Router, as_text

from .completer import Completer
from .delayed import Mover
from .health import BLOCK, READ_GRACE
from .health import window as health_window
from .limits import Limits
from .parking import WorkerVersions
from .starter import Starter
from .transient import TRANSIENT
from .vertex import Executor, Msg

log = logging.getLogger("aioflow.worker")

EVICTING = {
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
}


def check_server(info: dict[str, Any]) -> None:
    policy = info.get("maxmemory-policy")
    if policy in EVICTING:
        raise ConfigError(
            f"Redis maxmemory-policy is {policy!r}: it may evict run state and lose work. "
            "Set it to 'noeviction' (CONFIG SET maxmemory-policy noeviction, and in redis.conf)."
        )


async def _nothing() -> None:
    return None


class Worker:
    """Executes the vertices of ``flows`` from Redis until :meth:`stop` is called.

    ``redis`` is the client to use (a blocking connection pool is best); the
    worker takes one extra connection from it for its blocking reads.
    ``clock`` is the time source for retry delays and timestamps.
    """

    def __init__(
        self,
        flows: Sequence[Flow],
        redis: RedisClient,
        *,
        settings: Settings | None = None,
        name: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.flows = {f.name: f for f in flows}
        self.plans = {f.name: compile_dag(f) for f in flows}
        self.backend = Backend(redis)
        self.settings = settings or Settings()
        self.consumer = name or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.clock = clock
        self.streams: dict[str, Flow] = {}  # stream -> its flow, settled by prepare()
        self._stream_list: list[str] = []
        self._reserved = 0  # slots held by reads in progress
        self._busy_readers = 0  # readers whose last read found messages
        # read beyond the free slots (a blocked read holds none): (stream, message
        # id) -> entry, started as slots free, leases renewed meanwhile
        self._parked: dict[tuple[str, bytes], Any] = {}
        self._unparking = False
        self._unpark_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop  # the one run() runs in
        self._read_backoff = 0.05
        self._by_priority: dict[str, list[str]] = {}  # priority -> its streams, by prepare()
        self._busy: dict[str, set[str]] = {}  # per master: the priorities it last found work in
        self._prio_tick = 0
        # (stream, message id) -> ...: ids are unique within a stream only
        self._inflight: dict[tuple[str, bytes], tuple[Msg, asyncio.Task[None]]] = {}
        # read, not yet running or parked (being claimed): (stream, id) -> holders
        self._starting: dict[tuple[str, bytes], int] = {}
        self._by_run: dict[tuple[str, str], set[bytes]] = {}
        self._slot_event = asyncio.Event()
        self._stopping = asyncio.Event()
        self._threads = ThreadPoolExecutor(
            max_workers=min(32, self.settings.concurrency), thread_name_prefix="aioflow-node"
        )
        self.last_read: float = 0.0
        self.lease_lost = 0  # nodes cancelled: their lease could not be kept
        self._orphans_due = 0.0  # when to look for deliveries a failed read lost (monotonic)
        self._orphan_hunt: asyncio.Task[None] | None = None
        self._last_renewal = time.monotonic()  # leases of what runs were last renewed
        self._reading = self._episode("reading the streams")
        self._duties: dict[str, Episode] = {}
        self.ttl_ms = int(self.settings.result_ttl * 1000)
        self.fast = self.backend.fast
        self.tracing = tracing.configure(self.settings.tracing, role="worker")
        self.metrics = metrics.WorkerMetrics(lambda: len(self._inflight))
        self.completer = Completer(self, episode=self._episode("applying completions"))
        self.mover = Mover(self, episode=self._episode("moving due retries"))
        self.executor = Executor(
            self.backend,
            clock=clock,
            threads=self._threads,
            tracing=self.tracing,
            queue=self.completer.queue,
            note_due=self.mover.note_due,
            settings=self.settings,
        )
        self.versions = WorkerVersions(self)
        self.limits = Limits(
            self.fast,
            self.executor,
            settings=self.settings,
            clock=clock,
            queue=self.completer.queue,
            note_due=self.mover.note_due,
        )
        self.starter = Starter(self, episode=self._episode("starting messages (claim)"))

    def _episode(self, what: str) -> Episode:
        return Episode(log, what, on_failure=self._count_failure)

    def _count_failure(self, e: BaseException) -> None:
        if is_oom(e):
            self.metrics.redis_full += 1

    @property
    def redis(self) -> RedisClient:
        """The redis-py client (a ``RedisCluster`` on a cluster, once prepared)."""
        return self.backend.redis

    @property
    def completed(self) -> int:
        """Vertex completions applied (for tests and metrics)."""
        return self.completer.completed

    @property
    def fenced(self) -> int:
        """Completions refused: their messages were no longer pending for this worker."""
        return self.completer.fenced

    @property
    def _completing(self) -> Episode:
        return self.completer.completing

    # -- lifecycle --------------------------------------------------------------------

    async def prepare(self) -> None:
        """Find out the topology, check the server (every master of a cluster) and
        register the flows (done by :meth:`run` too)."""
        try:
            await self._prepare()
        finally:
            await self.fast.aclose()  # lean connections reopen when needed

    async def _prepare(self) -> None:
        await self.backend.start()
        for addr in self.fast.masters:
            try:
                raw: Any = await self.fast.execute_on(addr, "CONFIG", "GET", "maxmemory-policy")
            except REDIS_ERRORS:
                raise
            except Exception:  # CONFIG may be disabled on managed Redis
                raw = {}
            if isinstance(raw, list):
                raw = {as_text(k): as_text(v) for k, v in zip(raw[::2], raw[1::2], strict=False)}
            check_server(raw)
        self.streams = {
            s: f
            for f in self.flows.values()
            for p in range(partitions_of(f, self.fast))
            for s in keys.streams(f.name, p)
        }
        self._stream_list = list(self.streams)
        self._by_priority = {
            pr: [s for s in self._stream_list if priority.of_stream(s) == pr]
            for pr in priority.PRIORITIES
        }
        await register(self.redis, self.flows.values(), fast=self.fast)

    def stop(self) -> None:
        """Ask the worker to drain: stop reading, finish or hand back running nodes, return."""
        self._stopping.set()
        self._slot_event.set()

    async def run(self) -> None:
        # kept: asyncio.create_task() and asyncio.wait() look the loop up each time,
        # a getpid() syscall per call in CPython 3.11
        self._loop = asyncio.get_running_loop()
        stop_metrics = await self._serve_metrics()
        try:
            await self._retrying(self._prepare)
        except BaseException:
            with contextlib.suppress(*REDIS_ERRORS):
                await self.backend.aclose()
            await stop_metrics()
            raise
        log.info(
            "worker %s: concurrency %d, flows %s",
            self.consumer,
            self.settings.concurrency,
            ", ".join(self.flows),
        )
        self._last_renewal = time.monotonic()  # nothing is held yet
        tasks = [
            asyncio.create_task(self._read_all(), name="aioflow-read"),
            asyncio.create_task(self.completer.run(), name="aioflow-complete"),
            asyncio.create_task(self._housekeeping(), name="aioflow-housekeeping"),
            asyncio.create_task(self._lease_watch(), name="aioflow-lease-watch"),
            asyncio.create_task(self.mover.run(), name="aioflow-delayed"),
            asyncio.create_task(self._control_loop(), name="aioflow-control"),
            asyncio.create_task(ticking(self._scheduling_engine(), self.flows)),
        ]
        try:
            await self._stopping.wait()
            await self._drain()
        finally:
            if self._orphan_hunt is not None:
                tasks.append(self._orphan_hunt)
            await cancel_and_wait(tasks)
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, *REDIS_ERRORS):
                    await t
            with contextlib.suppress(*REDIS_ERRORS):
                await self._hand_back_unstarted()
            with contextlib.suppress(*REDIS_ERRORS):
                await self.backend.aclose()
            self._threads.shutdown(wait=False, cancel_futures=True)
            await self.executor.aclose()
            await stop_metrics()
            await tracing.flush()

    def _scheduling_engine(self) -> Engine:
        # the worker's own connections: no second cluster client or discovery
        return Engine.from_settings(
            self.backend.given, self.settings, backend=self.backend, clock=self.clock
        )

    async def _serve_metrics(self) -> Callable[[], Awaitable[None]]:
        """Serve /metrics on ``metrics_port`` (when set); answers what stops it."""
        port = self.settings.metrics_port
        if port is None:
            return _nothing
        runner = await metrics.serve(self.metrics.registry, self.settings.host, port)
        return runner.cleanup

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.settings.grace
        while self._inflight and time.monotonic() < deadline:
            self._slot_event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - time.monotonic()):
                    await self._slot_event.wait()
        left = list(self._inflight.values())
        if left:
            log.warning("grace period over: handing back %d running vertices", len(left))
        for m, _ in left:
            m.cancelled = "drain"
        # a node gets a second between cancels to run its own cleanup (finally blocks)
        await cancel_and_wait((task for _, task in left), every=1.0)
        for _, task in left:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # completions already queued, then the hand-backs, until all are applied
        completer = self.completer
        for m, _ in left:
            if (m.stream, m.id) in self._inflight:
                completer.queue(m, self.executor.handback_ops(m), mode="r", vstatus="queued")
        # (a Redis that stays away is given up on after two more Redis timeouts: what
        # was not applied stays pending and is redelivered after visibility_timeout)
        give_up = completer.give_up = time.monotonic() + 2 * self.settings.redis_timeout
        while (completer.done or self._inflight) and time.monotonic() < give_up:
            await completer.flush()
            if completer.done or self._inflight:  # a flush by another task, or a retry pause
                await asyncio.sleep(0.02)
        if completer.done or self._inflight:
            log.warning(
                "stopping with %d completions not applied (Redis unavailable): their "
                "messages stay pending and are redelivered after visibility_timeout",
                len(completer.done) or len(self._inflight),
            )
            return
        await self.limits.flush()

    async def _hand_back_unstarted(self) -> None:
        """Messages delivered to us that no task runs (a read cut short by the
        shutdown) go back to the stream now rather than after visibility_timeout."""
        for stream in self._stream_list:
            pending: Any = await self.fast.execute(
                "XPENDING", stream, keys.GROUP, "-", "+", 10000, self.consumer
            )
            ids = [p[0] for p in pending or () if (stream, p[0]) not in self._inflight]
            if ids:
                n = await SCRIPTS.call(self.fast, "handback", stream, self.consumer, *ids)
                log.info("handed back %d unstarted messages on %s", n, stream)

    async def _retrying(self, fn: Callable[[], Any]) -> Any:
        where = self.fast.lean_template().endpoint if isinstance(self.fast, Router) else "Redis"
        episode = self._episode(f"worker start (reaching {where})")
        while True:
            try:
                result = await fn()
                episode.ok()
                return result
            except TRANSIENT as e:
                if self._stopping.is_set():
                    raise
                await asyncio.sleep(episode.failed(e))

    # -- reading ----------------------------------------------------------------------

    def _free(self) -> int:
        return self.settings.concurrency - len(self._inflight)

    async def _read_all(self) -> None:
        """One reader per master (the one server when not a cluster), regrouped
        whenever the slot map changes; the readers share the free slots.

        A reader sweeps all its streams with non-blocking reads in one write (one
        XREADGROUP per slot: a cluster refuses multi-slot commands even within one
        master) while they have work, and only when a sweep finds nothing does it
        block, one read per slot on connections of their own. A blocked read holds
        no slot: what it brings beyond the free slots waits in ``_parked`` (already
        ours in Redis, its lease renewed) until a slot frees.
        """
        while not self._stopping.is_set():
            epoch = self.fast.epoch
            by_addr: dict[Addr, list[list[str]]] = {}
            for addr, streams in self.fast.read_groups(self._stream_list):
                by_addr.setdefault(addr, []).append(streams)
            readers = [
                asyncio.create_task(
                    self._read_master(addr, groups, epoch, len(by_addr)), name="aioflow-read"
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
                await asyncio.sleep(self._read_backoff)
                self._read_backoff = min(self._read_backoff * 2, 2.0)
            finally:
                await cancel_and_wait(readers)
                for r in readers:
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await r

    def _reader_conn(self, addr: Addr) -> Lean | RedisPyLean:
        # reads get connections of their own; scripts share self.fast
        if isinstance(self.fast, Router):
            t = self.fast.lean_template()
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
        assert isinstance(self.backend.given, Redis)
        return RedisPyLean(self.backend.given.client())

    @staticmethod
    async def _close_conn(conn: Lean | RedisPyLean) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await conn.aclose()
            if isinstance(conn, RedisPyLean):
                await conn.redis.aclose()

    async def _read_master(
        self, addr: Addr, groups: list[list[str]], epoch: int, readers: int
    ) -> None:
        """The reads of one master: ``groups`` are its streams by slot. A slot is hot
        (swept without blocking, all hot slots in one write) while its reads find
        messages, else cold (one blocking read of its own, holding no slot) until
        that read brings a full COUNT."""
        sweeper = self._reader_conn(addr)
        conns: list[Lean | RedisPyLean | None] = [None] * len(groups)
        if len(groups) == 1:  # a hot slot has no blocking read: one connection is enough
            conns[0] = sweeper
        waits: dict[int, tuple[asyncio.Task[int], int]] = {}  # slot: its read, COUNT
        woke = asyncio.Event()  # a blocking read ended
        hot = set(range(len(groups)))  # a first sweep finds out
        slot_of = {s: i for i, g in enumerate(groups) for s in g}
        nstreams = len(slot_of)
        busy = False  # some slot is hot (counted in _busy_readers)
        try:
            while not self._stopping.is_set() and self.fast.epoch == epoch:
                free = self._free() - self._reserved - len(self._parked)
                if free <= 0:
                    self._slot_event.clear()
                    await self._slot_event.wait()
                    continue
                if readers == 1:
                    share = free
                elif busy:  # the readers that found messages last time share the free slots
                    share = max(1, free // max(1, self._busy_readers))
                else:
                    share = max(1, free // readers)
                if hot:
                    chosen = [groups[i] for i in sorted(hot)]
                    swept = await self._sweep(sweeper, addr, chosen, slot_of, share)
                    if swept is None:
                        await self._refresh()
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
                    self._busy_readers += 1 if busy else -1
                # cold slots: a blocking read each (unless one is out already). Each
                # may bring the whole share (a COUNT of share / nstreams made a trickle
                # over several slots read two at a time, and every "full" read turned
                # its slot hot for a sweep that found nothing), all of them together
                # at most twice the share; what exceeds the free slots is parked
                for i, g in enumerate(groups):
                    if i not in hot and i not in waits:
                        conn = conns[i] = conns[i] or self._reader_conn(addr)
                        count = max(1, min(share // len(g), 2 * share // nstreams))
                        t = self._loop.create_task(self._wait_group(conn, g, count))
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
                    await self._refresh()
        finally:
            if busy:
                self._busy_readers -= 1
            # a blocked read ends within its BLOCK: let it land rather than lose what
            # it brings to the visibility timeout (unless the worker is stopping)
            tasks = [t for t, _ in waits.values()]
            if tasks and not self._stopping.is_set():
                await asyncio.wait(tasks, timeout=2.0)
            # a cancelled read may be opening its connection: let it end before closing
            await cancel_and_wait(tasks)
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in {id(c): c for c in (sweeper, *conns) if c is not None}.values():
                await self._close_conn(c)

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
        :mod:`aioflow.priority`), sent in one write; starts what they bring and
        answers the streams read and those that had messages (None: they failed)."""
        by_priority: dict[str, list[str]] = {}
        for g in groups:
            for s in g:
                by_priority.setdefault(priority.of_stream(s), []).append(s)
        busy = self._busy.setdefault(f"{addr[0]}:{addr[1]}", set())
        plan = priority.plan_reads(share, by_priority, busy, self._prio_tick)
        self._prio_tick += 1
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
        self._reserved += share
        try:
            replies = await conn.execute_many(commands, raise_errors=False)
        except REDIS_ERRORS as e:
            self._reserved -= share
            self._slots_freed()
            await self._read_failed(e)
            return None
        failed = False
        got = 0
        found: set[str] = set()
        busy.clear()
        for p, resp in zip(prios, replies, strict=True):
            if isinstance(resp, BaseException):
                failed = True
                await self._read_failed(resp)
            elif resp:
                busy.add(p)
                for stream, entries in resp:
                    found.add(as_text(stream))
                    got += len(entries)
        self._reserved -= share - got
        if not failed:
            self.last_read = time.monotonic()  # an answered read, empty or not
            self._reading.ok()
        if got:
            self._read_backoff = 0.05
        held = self._hold(
            (as_text(stream), entries)
            for resp in replies
            if resp and not isinstance(resp, BaseException)
            for stream, entries in resp
        )
        try:
            for resp in replies:
                if resp and not isinstance(resp, BaseException):
                    for stream, entries in resp:
                        await self._start(as_text(stream), entries, reclaimed=False)
        finally:
            self._unhold(held)
            self._reserved -= got
            self._slots_freed()
        return None if failed and not got else (read, found)

    def _hold(self, batches: Any) -> list[tuple[str, bytes]]:
        """Mark read entries as being started (not orphans: see _recover_orphans)."""
        held = [(stream, e[0]) for stream, entries in batches for e in entries if e is not None]
        starting = self._starting
        for k in held:
            starting[k] = starting.get(k, 0) + 1
        return held

    def _unhold(self, held: list[tuple[str, bytes]]) -> None:
        starting = self._starting
        for k in held:
            n = starting[k] - 1
            if n:
                starting[k] = n
            else:
                del starting[k]

    async def _wait_group(self, conn: Lean | RedisPyLean, streams: list[str], count: int) -> int:
        """A blocking read of one slot's streams: how many messages it brought
        (-1: it failed). What exceeds the free slots on arrival is parked."""
        try:
            resp: Any = await conn.execute(
                *self._xread(count, streams, block_ms=int(BLOCK * 1000)),
                timeout=BLOCK + READ_GRACE,
            )
        except (ResponseError, *REDIS_ERRORS) as e:
            await self._read_failed(e)
            return -1
        self._read_backoff = 0.05
        # an empty blocking read is a read: the worker listens (worker --health)
        self.last_read = time.monotonic()
        self._reading.ok()
        got = 0
        held = self._hold((as_text(stream), entries) for stream, entries in resp or ())
        try:
            for stream, entries in resp or ():
                got += len(entries)
                await self._take(as_text(stream), entries)
        finally:
            self._unhold(held)
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

    async def _take(self, stream: str, entries: list[Any]) -> None:
        """Start what the free slots allow of ``entries``, park the rest."""
        free = max(0, self._free() - self._reserved - len(self._parked))
        now, later = entries[:free], entries[free:]
        for e in later:
            if e is not None:
                self._parked[(stream, e[0])] = e
        if now:
            await self._start_held({stream: now})

    async def _start_held(self, batch: dict[str, list[Any]]) -> None:
        """Start read messages, by stream, holding their slots until claimed."""
        n = sum(len(es) for es in batch.values())
        self._reserved += n
        try:
            for stream, es in batch.items():
                await self._start(stream, es, reclaimed=False)
        finally:
            self._reserved -= n
            self._slots_freed()

    async def _unpark(self) -> None:
        """Start parked messages as slots free (run on each release while any wait)."""
        if self._unparking:
            return
        self._unparking = True
        try:
            while self._parked and not self._stopping.is_set():
                free = self._free() - self._reserved
                if free <= 0:
                    return
                batch: dict[str, list[Any]] = {}
                for key in list(self._parked)[:free]:
                    batch.setdefault(key[0], []).append(self._parked.pop(key))
                held = self._hold(batch.items())
                try:
                    await self._start_held(batch)
                finally:
                    self._unhold(held)
        finally:
            self._unparking = False
            self._slot_event.set()

    async def _read_failed(self, e: BaseException) -> None:
        """Say why a read failed, and recreate the groups when they are gone."""
        text = str(e)
        if not isinstance(e, ResponseError):  # Redis away: the caller backs off
            self._reading.failed(e)
            if not self._orphans_due:  # its reply may have carried messages: look soon
                self._orphans_due = time.monotonic() + self._orphan_idle()
        elif text.startswith("NOGROUP"):
            # the group's creation was lost (a failover before it replicated)
            log.warning("read failed (%s): creating the consumer groups again", e)
            with contextlib.suppress(*REDIS_ERRORS, ResponseError):
                await register(self.redis, self.flows.values(), fast=self.fast)
        elif text.startswith(("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")):
            # a slot of ours moved (failover, resharding): regroup the readers
            log.info("read redirected (%s); refreshing the cluster map", e)
        else:
            log.error("read failed (%s); retrying", e)

    async def _refresh(self) -> None:
        await asyncio.sleep(self._read_backoff)
        self._read_backoff = min(self._read_backoff * 2, 2.0)
        with contextlib.suppress(*REDIS_ERRORS):
            await self.fast.refresh()

    def _start(
        self, stream: str, entries: list[Any], *, reclaimed: bool
    ) -> Coroutine[Any, Any, None]:
        # what every part starts messages through (the starter's coroutine, handed
        # over: no await of its own)
        return self.starter.start(stream, entries, reclaimed=reclaimed)

    def _launch(self, m: Msg, now: float) -> None:
        self.metrics.started(m, now)
        # the completer applies what the node queues: a flush from this task needed a
        # shielded task of its own per vertex, and nodes ending together each made one
        task = self._loop.create_task(self.executor.run(m))
        self._inflight[(m.stream, m.id)] = (m, task)
        self._by_run.setdefault((m.stream, m.uid), set()).add(m.id)

    def _release(self, m: Msg) -> None:
        if self._inflight.pop((m.stream, m.id), None) is not None:
            ids = self._by_run.get((m.stream, m.uid))
            if ids is not None:
                ids.discard(m.id)
                if not ids:
                    del self._by_run[(m.stream, m.uid)]
            self._slots_freed()

    def _slots_freed(self) -> None:
        self._slot_event.set()
        if self._parked and not self._unparking:
            self._unpark_task = asyncio.get_running_loop().create_task(self._unpark())

    # -- background duties ------------------------------------------------------------

    async def _housekeeping(self) -> None:
        vt = self.settings.visibility_timeout
        every = max(0.05, min(vt / 3, 5.0))
        last_trim = 0.0
        while not self._stopping.is_set():
            await asyncio.sleep(every)
            # each duty on its own: a failed heartbeat must not skip the lease renewal
            await self._duty("heartbeat", self._heartbeat)
            await self._duty("stopped runs", self._cancel_stopped)
            await self._duty("lease renewal", self._extend_leases)
            if not (self.starter.claiming.active or self._completing.active):
                # (a claim refused now would be refused again)
                await self._duty("reclaim", lambda: self._reclaim(int(vt * 1000)))
                await self._duty("orphans", self._recover_orphans)
            slow = time.monotonic() - last_trim > 5.0
            await self._duty("versions", functools.partial(self.versions.tick, slow=slow))
            if slow:
                last_trim = time.monotonic()
                await self._duty("trim", self._trim)
                await self._duty("index pruning", self._prune_index)
                await self._duty("heartbeat pruning", self._prune_heartbeats)

    async def _duty(self, name: str, fn: Callable[[], Any]) -> None:
        episode = self._duties.get(name)
        if episode is None:
            episode = self._duties[name] = self._episode(f"worker housekeeping ({name})")
        try:
            await fn()
            episode.ok()
        except TRANSIENT as e:
            episode.failed(e)  # Redis away or full: the next pass tries again
        except Exception:
            # redis-py's RedisCluster can raise RuntimeError on a connection a failover
            # closed under it; a housekeeping duty must never die of it
            log.exception("worker housekeeping step failed; retrying next pass")

    async def _trim(self) -> None:
        for stream in self._stream_list:
            await SCRIPTS.call(self.fast, "trim", stream)

    async def _heartbeat(self) -> None:
        doc = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "last_read": time.time() - (time.monotonic() - self.last_read),
            "inflight": len(self._inflight),
            "concurrency": self.settings.concurrency,
            "window": health_window(self.settings),  # what --health judges it by
            "beat": time.time(),
            "completed": self.completed,
            "versions": self.versions.served,
        }
        await self.redis.hset(keys.WORKERS, self.consumer, codec.dumps(doc))

    async def _prune_index(self) -> None:
        """Drop index entries of runs that expired (the index outlives no run)."""
        horizon = self.clock() - self.settings.result_ttl
        for stream in self._by_priority["default"]:
            tag = keys.stream_tag(stream)
            old: Any = await self.redis.zrangebyscore(f"{tag}:i", "-inf", horizon, start=0, num=500)
            if not old:
                continue
            async with self.redis.pipeline(transaction=False) as pipe:
                for k in old:
                    pipe.exists(f"{tag}:r:{k.decode()}")
                alive = await pipe.execute()
            gone = [k for k, a in zip(old, alive, strict=True) if not a]
            if gone:
                await self.redis.zrem(f"{tag}:i", *gone)

    async def _prune_heartbeats(self) -> None:
        """Forget workers silent for a day, so af:workers stays bounded."""
        beats: Any = await self.redis.hgetall(keys.WORKERS)
        now = time.time()
        stale = [n for n, d in beats.items() if now - codec.loads(d).get("beat", 0) > 86400]
        if stale:
            await self.redis.hdel(keys.WORKERS, *stale)

    async def _cancel_stopped(self) -> None:
        """Cancel nodes of runs stopped meanwhile: the pub/sub stop message is only a
        fast path, a worker whose subscription dropped still finds out here."""
        runs = list(self._by_run)
        if not runs:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, uid in runs:
                pipe.hget(f"{keys.stream_tag(stream)}:r:{uid}", "status")
            statuses = await pipe.execute()
        for (stream, uid), st in zip(runs, statuses, strict=True):
            if st == b"stopped":
                flow = self.streams[stream].name
                part = stream.split(":")[-2].rstrip("}")
                self._on_control(f"stop {flow}.{part}.{uid}")

    async def _extend_leases(self) -> None:
        began = time.monotonic()
        by_stream: dict[str, list[bytes]] = {}
        for m, _ in self._inflight.values():
            by_stream.setdefault(m.stream, []).append(m.id)
        for stream, mid in self._parked:
            by_stream.setdefault(stream, []).append(mid)
        for stream, ids in by_stream.items():
            lost = await SCRIPTS.call(self.fast, "lease", stream, self.consumer, *ids)
            for mid in lost:
                self._parked.pop((stream, mid), None)  # another worker has it now
                item = self._inflight.get((stream, mid))
                if item is not None and not item[1].done():
                    # reclaimed by another worker, which runs it now
                    self._lose_lease(item[0], item[1], "reclaimed by another worker")
        self._last_renewal = began
        await self.limits.renew()

    async def _lease_watch(self) -> None:
        # apart from the housekeeping: its calls may each wait out a Redis timeout
        vt = self.settings.visibility_timeout
        while not self._stopping.is_set():
            await asyncio.sleep(max(0.05, min(vt / 4, 1.0)))
            self._drop_lost_leases()
            due = self._orphans_due
            hunting = self._orphan_hunt is not None and not self._orphan_hunt.done()
            refused = self.starter.claiming.active or self._completing.active
            if due and time.monotonic() >= due and not hunting and not refused:
                self._orphans_due = 0.0
                self._orphan_hunt = self._loop.create_task(
                    self._duty("orphans", self._recover_orphans), name="aioflow-orphans"
                )

    def _drop_lost_leases(self) -> None:
        """Cancel the nodes whose leases could not be renewed for longer than the
        visibility timeout: another worker may have reclaimed and started them."""
        unrenewed = time.monotonic() - self._last_renewal
        if unrenewed <= self.settings.visibility_timeout:
            return
        for m, task in list(self._inflight.values()):
            if not task.done() and m.cancelled is None:
                self._lose_lease(m, task, f"lease not renewed for {unrenewed:.0f} s")
        self._parked.clear()  # ours no longer: the reclaim hands them to someone

    def _lose_lease(self, m: Msg, task: asyncio.Task[None], why: str) -> None:
        log.warning(
            "cancelling vertex %s of run %s: %s (visibility_timeout=%g s)",
            m.addr,
            m.rid,
            why,
            self.settings.visibility_timeout,
            extra={"flow": m.flow.name, "run_id": str(m.rid), "vertex": m.addr},
        )
        self.lease_lost += 1
        self.metrics.lease_lost(m)
        m.cancelled = "lease_lost"
        task.cancel()
        task.add_done_callback(lambda _: self._lease_dropped(m))

    def _lease_dropped(self, m: Msg) -> None:
        self.limits.done(m, fenced=True)
        self._release(m)

    async def _reclaim(self, min_idle_ms: int) -> None:
        for stream in self._stream_list:
            free = self._free()
            if free <= 0 or self._stopping.is_set():
                return
            res: Any = await self.fast.execute(
                "XAUTOCLAIM", stream, keys.GROUP, self.consumer, min_idle_ms, "0-0", "COUNT", free
            )
            # 6.2 answers deleted entries as nil, 7.0 lists them apart: skip both
            entries = [e for e in (res[1] if res else []) if e and e[1] is not None]
            if entries:
                log.info("reclaimed %d idle messages on %s", len(entries), stream)
                await self._start(stream, entries, reclaimed=True)

    def _orphan_idle(self) -> float:
        # longer than any read's reply may take to arrive (sweeps: redis_timeout)
        return max(BLOCK + READ_GRACE, self.settings.redis_timeout) + 1.0

    async def _recover_orphans(self) -> None:
        """Start again the messages Redis delivered to this worker whose read reply
        never arrived (the link stalled with the reply on its way, and the connection
        was replaced): pending for this consumer, yet neither running, parked, being
        started nor completing here. Without this they would wait for the visibility
        timeout. Only entries idle for longer than any read may take count, so a
        read still on its way is never mistaken for a lost one."""
        idle_ms = int(self._orphan_idle() * 1000)
        for stream in self._stream_list:
            if self._stopping.is_set():
                return
            pending: Any = await self.fast.execute(
                "XPENDING", stream, keys.GROUP, "IDLE", idle_ms, "-", "+", 1000, self.consumer
            )
            if not pending:
                continue
            known = self.completer.pending()
            known.update(self._inflight, self._parked, self._starting)
            lost = [p[0] for p in pending if (stream, p[0]) not in known]
            if not lost:
                continue
            # XCLAIM with the same min idle: one renewed or taken meanwhile is skipped
            entries: Any = await self.fast.execute(
                "XCLAIM", stream, keys.GROUP, self.consumer, idle_ms, *lost
            )
            entries = [e for e in entries or () if e and e[1] is not None]
            if entries:
                log.warning(
                    "%d messages on %s were delivered to this worker by a read whose reply "
                    "was lost: starting them again",
                    len(entries),
                    stream,
                )
                await self._start(stream, entries, reclaimed=True)

    async def _control_loop(self) -> None:
        while not self._stopping.is_set():
            ps = self.redis.pubsub()
            # a quiet channel is pinged: a link that stays silent (stalled without a
            # reset) is dropped and subscribed again instead of staying deaf
            quiet = max(0.5, self.settings.redis_timeout / 2)
            try:
                await ps.subscribe(keys.CONTROL)
                heard = time.monotonic()
                while not self._stopping.is_set():
                    msg = await ps.get_message(timeout=1.0)
                    now = time.monotonic()
                    if msg is not None:
                        heard = now
                        if msg["type"] == "message":
                            self._on_control(msg["data"].decode())
                    elif now - heard > quiet + self.settings.redis_timeout:
                        raise TimeoutError(f"control channel silent for {now - heard:.0f} s")
                    elif now - heard > quiet:
                        await ps.ping()
            except Exception as e:  # Redis away, or redis-py's cluster pub/sub failing
                log.debug("control channel lost (%r); subscribing again", e)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await ps.aclose()

    def _on_control(self, text: str) -> None:
        action, _, run_id = text.partition(" ")
        if action == "adopt":
            self.versions.wake(run_id)
            return
        if action != "stop":
            return
        try:
            rid = RunId.parse(run_id)
        except Exception:
            return
        mids = [
            (s, m)
            for s in keys.streams(rid.flow, rid.partition)
            for m in self._by_run.get((s, rid.key), ())
        ]
        for key in mids:
            item = self._inflight.get(key)
            if item is not None:
                log.info("stopping %s of run %s", item[0].addr, run_id)
                item[0].cancelled = "stop"
                item[1].cancel()
