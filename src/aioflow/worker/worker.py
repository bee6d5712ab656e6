"""The worker: reads vertex messages in batches, runs node functions as asyncio
tasks bounded by ``concurrency``, and applies completions in batches.

Per batch of messages it makes one round trip to start them (the ``claim``
script: status and dedup checks, attempt count, join inputs) and one to finish
them (the ``complete`` script). Messages are acked only by those scripts.
What running one message means lives in :mod:`aioflow.worker.vertex`.

:class:`Worker` owns the slots (the nodes running, at most ``concurrency``),
starts and stops, drains, and wires together its parts, each in a module of
its own:

- :mod:`~aioflow.worker.readers`, :mod:`~aioflow.worker.reader`: the reads, one
  reader per Redis master, and what does not fit the free slots (parked);
- :mod:`~aioflow.worker.starter`: claims what was read, launches nodes into slots;
- :mod:`~aioflow.worker.completer`: applies the nodes' outcomes in batches,
  which frees their slots;
- :mod:`~aioflow.worker.delayed`: moves due retries and delayed starts onto the
  streams;
- :mod:`~aioflow.worker.housekeeping`: leases, reclaim, heartbeat, trimming,
  pruning;
- :mod:`~aioflow.worker.control`: the control channel (stopping runs, adopting);
- :mod:`~aioflow.worker.parking`: the messages of other versions of a flow;
- :mod:`~aioflow.worker.limits`: global concurrency and rate limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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
from aioflow.store.outage import REDIS_ERRORS, Episode, is_oom
from aioflow.store.topology import Backend, RedisClient, Router, as_text

from .completer import Completer
from .control import ControlListener
from .delayed import Mover
from .housekeeping import Housekeeping
from .limits import Limits
from .parking import WorkerVersions
from .readers import Readers
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
        self._by_priority: dict[str, list[str]] = {}  # priority -> its streams, by prepare()
        # the slots, (stream, message id) -> ...: ids are unique within a stream only
        self._inflight: dict[tuple[str, bytes], tuple[Msg, asyncio.Task[None]]] = {}
        self._by_run: dict[tuple[str, str], set[bytes]] = {}
        self._slot_event = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop  # the one run() runs in
        self._threads = ThreadPoolExecutor(
            max_workers=min(32, self.settings.concurrency), thread_name_prefix="aioflow-node"
        )
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
        self.readers = Readers(
            self, episode=self._episode("reading the streams"), completions=self.completer
        )
        self.control = ControlListener(self)
        self.housekeeping = Housekeeping(
            self,
            readers=self.readers,
            cancel_stopped=self.control.cancel_stopped,
            claiming=self.starter.claiming,
            completing=self.completer.completing,
            episode=self._episode,
        )
        # a freed slot may start a parked message (bound once: called per completion)
        self._slots_freed = self.readers.slots_freed

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
    def lease_lost(self) -> int:
        """Nodes cancelled because their leases could not be kept."""
        return self.housekeeping.lease_lost

    @property
    def last_read(self) -> float:
        """When a read was last answered (``time.monotonic()``; 0: never)."""
        return self.readers.last_read

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
        self.housekeeping.last_renewal = time.monotonic()  # nothing is held yet
        tasks = [
            asyncio.create_task(self.readers.run(), name="aioflow-read"),
            asyncio.create_task(self.completer.run(), name="aioflow-complete"),
            asyncio.create_task(self.housekeeping.run(), name="aioflow-housekeeping"),
            asyncio.create_task(self.housekeeping.watch_leases(), name="aioflow-lease-watch"),
            asyncio.create_task(self.mover.run(), name="aioflow-delayed"),
            asyncio.create_task(self.control.run(), name="aioflow-control"),
            asyncio.create_task(ticking(self._scheduling_engine(), self.flows)),
        ]
        try:
            await self._stopping.wait()
            await self._drain()
        finally:
            if self.housekeeping.orphan_hunt is not None:
                tasks.append(self.housekeeping.orphan_hunt)
            await cancel_and_wait(tasks)
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, *REDIS_ERRORS):
                    await t
            with contextlib.suppress(*REDIS_ERRORS):
                await self.readers.hand_back_unstarted()
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

    # -- the slots --------------------------------------------------------------------

    def _free(self) -> int:
        return self.settings.concurrency - len(self._inflight)

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
