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
from aioflow.store.keys import RunId
from aioflow.store.outage import REDIS_ERRORS, Episode, is_oom
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import Backend, RedisClient, Router, as_text

from .completer import Completer
from .delayed import Mover
from .health import window as health_window
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
        self.lease_lost = 0  # nodes cancelled: their lease could not be kept
        self._orphan_hunt: asyncio.Task[None] | None = None
        self._last_renewal = time.monotonic()  # leases of what runs were last renewed
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
        self.readers = Readers(
            self, episode=self._episode("reading the streams"), completions=self.completer
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
        self._last_renewal = time.monotonic()  # nothing is held yet
        tasks = [
            asyncio.create_task(self.readers.run(), name="aioflow-read"),
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
                await self._duty("orphans", self.readers.recover_orphans)
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
        for stream, mid in self.readers.parked:
            by_stream.setdefault(stream, []).append(mid)
        for stream, ids in by_stream.items():
            lost = await SCRIPTS.call(self.fast, "lease", stream, self.consumer, *ids)
            for mid in lost:
                self.readers.parked.pop((stream, mid), None)  # another worker has it now
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
            due = self.readers.orphans_due
            hunting = self._orphan_hunt is not None and not self._orphan_hunt.done()
            refused = self.starter.claiming.active or self._completing.active
            if due and time.monotonic() >= due and not hunting and not refused:
                self.readers.orphans_due = 0.0
                self._orphan_hunt = self._loop.create_task(
                    self._duty("orphans", self.readers.recover_orphans), name="aioflow-orphans"
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
        self.readers.parked.clear()  # ours no longer: the reclaim hands them to someone

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
