"""The housekeeping: the worker's duties beside the reads and the completions.

Every pass (a third of ``visibility_timeout``, at most 5 s) it heartbeats,
cancels the nodes of runs stopped meanwhile, renews the leases of the messages
it holds (running and parked), reclaims messages idle past the visibility
timeout, recovers deliveries whose read reply was lost, runs the versions' pass
and finishes the fan-outs of events its flows listen to that their senders left
(they died; see :mod:`aioflow.engine.events`); every 5 s it also trims the
streams and prunes the run index and old heartbeats. Each duty runs on its own:
one failing (Redis away or full) does not skip the others. The lease watch runs
apart, since the housekeeping's calls may each wait out a Redis timeout: it
cancels nodes whose leases could not be renewed for longer than the visibility
timeout (another worker may have reclaimed and started them), and starts the
lost-read recovery soon after a read failed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from aioflow.core import codec
from aioflow.core.settings import Settings
from aioflow.definitions.model import Flow
from aioflow.engine import events
from aioflow.engine.engine import Engine
from aioflow.observability.metrics import WorkerMetrics
from aioflow.store import keys
from aioflow.store.outage import Episode
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import Backend, Conn, RedisClient

from .health import window as health_window
from .limits import Limits
from .parking import WorkerVersions
from .transient import TRANSIENT
from .vertex import Msg

if TYPE_CHECKING:
    from .readers import Readers

log = logging.getLogger("aioflow.worker")


class Host(Protocol):
    """What the housekeeping needs of the worker."""

    settings: Settings
    fast: Conn
    backend: Backend
    flows: dict[str, Flow]
    consumer: str
    clock: Callable[[], float]
    versions: WorkerVersions
    limits: Limits
    metrics: WorkerMetrics
    _stream_list: list[str]
    _by_priority: dict[str, list[str]]
    _inflight: dict[tuple[str, bytes], tuple[Msg, asyncio.Task[None]]]
    _stopping: asyncio.Event
    _loop: asyncio.AbstractEventLoop

    @property
    def redis(self) -> RedisClient: ...
    @property
    def last_read(self) -> float: ...
    @property
    def completed(self) -> int: ...
    def _free(self) -> int: ...
    def _start(self, stream: str, entries: list[Any], *, reclaimed: bool) -> Awaitable[None]: ...
    def _release(self, m: Msg) -> None: ...


class Housekeeping:
    """Runs the housekeeping passes (:meth:`run`) and the lease watch
    (:meth:`watch_leases`), two tasks. ``readers`` hold the parked messages and
    recover lost reads; ``cancel_stopped`` cancels the nodes of stopped runs; while
    ``claiming`` or ``completing`` fail (Redis full or away) nothing is reclaimed;
    ``episode`` makes the episode that logs a duty's failures."""

    def __init__(
        self,
        worker: Host,
        *,
        readers: Readers,
        cancel_stopped: Callable[[], Awaitable[None]],
        claiming: Episode,
        completing: Episode,
        episode: Callable[[str], Episode],
    ) -> None:
        self.w = worker
        self._readers = readers
        self._cancel_stopped = cancel_stopped
        self._claiming = claiming
        self._completing = completing
        self._episode = episode
        self._duties: dict[str, Episode] = {}
        self.last_renewal = time.monotonic()  # leases of what runs were last renewed
        self.lease_lost = 0  # nodes cancelled: their lease could not be kept
        self.orphan_hunt: asyncio.Task[None] | None = None
        self._events = events.listened(worker.flows.values())
        self._sender: Engine | None = None

    async def run(self) -> None:
        w = self.w
        vt = w.settings.visibility_timeout
        every = max(0.05, min(vt / 3, 5.0))
        last_trim = 0.0
        while not w._stopping.is_set():
            await asyncio.sleep(every)
            # each duty on its own: a failed heartbeat must not skip the lease renewal
            await self._duty("heartbeat", self._heartbeat)
            await self._duty("stopped runs", self._cancel_stopped)
            await self._duty("lease renewal", self._extend_leases)
            if not (self._claiming.active or self._completing.active):
                # (a claim refused now would be refused again)
                await self._duty("reclaim", lambda: self._reclaim(int(vt * 1000)))
                await self._duty("orphans", self._readers.recover_orphans)
            if self._events:
                await self._duty("event fan-outs", self._redo_fanouts)
            slow = time.monotonic() - last_trim > 5.0
            await self._duty("versions", functools.partial(w.versions.tick, slow=slow))
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
        w = self.w
        for stream in w._stream_list:
            await SCRIPTS.call(w.fast, "trim", stream)

    async def _redo_fanouts(self) -> None:
        w = self.w
        if self._sender is None:  # on the worker's connections
            self._sender = Engine.from_settings(
                w.backend.given, w.settings, backend=w.backend, clock=w.clock
            )
        await events.redo_due(self._sender, self._events)

    async def _heartbeat(self) -> None:
        w = self.w
        doc = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "last_read": time.time() - (time.monotonic() - w.last_read),
            "inflight": len(w._inflight),
            "concurrency": w.settings.concurrency,
            "window": health_window(w.settings),  # what --health judges it by
            "beat": time.time(),
            "completed": w.completed,
            "versions": w.versions.served,
        }
        await w.redis.hset(keys.WORKERS, w.consumer, codec.dumps(doc))

    async def _prune_index(self) -> None:
        """Drop index entries of runs that expired (the index outlives no run)."""
        w = self.w
        horizon = w.clock() - w.settings.result_ttl
        for stream in w._by_priority["default"]:
            tag = keys.stream_tag(stream)
            old: Any = await w.redis.zrangebyscore(f"{tag}:i", "-inf", horizon, start=0, num=500)
            if not old:
                continue
            async with w.redis.pipeline(transaction=False) as pipe:
                for k in old:
                    pipe.exists(f"{tag}:r:{k.decode()}")
                alive = await pipe.execute()
            gone = [k for k, a in zip(old, alive, strict=True) if not a]
            if gone:
                await w.redis.zrem(f"{tag}:i", *gone)

    async def _prune_heartbeats(self) -> None:
        """Forget workers silent for a day, so af:workers stays bounded."""
        w = self.w
        beats: Any = await w.redis.hgetall(keys.WORKERS)
        now = time.time()
        stale = [n for n, d in beats.items() if now - codec.loads(d).get("beat", 0) > 86400]
        if stale:
            await w.redis.hdel(keys.WORKERS, *stale)

    async def _extend_leases(self) -> None:
        w = self.w
        began = time.monotonic()
        by_stream: dict[str, list[bytes]] = {}
        for m, _ in w._inflight.values():
            by_stream.setdefault(m.stream, []).append(m.id)
        for stream, mid in self._readers.parked:
            by_stream.setdefault(stream, []).append(mid)
        for stream, ids in by_stream.items():
            lost = await SCRIPTS.call(w.fast, "lease", stream, w.consumer, *ids)
            for mid in lost:
                self._readers.parked.pop((stream, mid), None)  # another worker has it now
                item = w._inflight.get((stream, mid))
                if item is not None and not item[1].done():
                    # reclaimed by another worker, which runs it now
                    self._lose_lease(item[0], item[1], "reclaimed by another worker")
        self.last_renewal = began
        await w.limits.renew()

    async def watch_leases(self) -> None:
        # apart from the housekeeping: its calls may each wait out a Redis timeout
        w = self.w
        vt = w.settings.visibility_timeout
        while not w._stopping.is_set():
            await asyncio.sleep(max(0.05, min(vt / 4, 1.0)))
            self._drop_lost_leases()
            due = self._readers.orphans_due
            hunting = self.orphan_hunt is not None and not self.orphan_hunt.done()
            refused = self._claiming.active or self._completing.active
            if due and time.monotonic() >= due and not hunting and not refused:
                self._readers.orphans_due = 0.0
                self.orphan_hunt = w._loop.create_task(
                    self._duty("orphans", self._readers.recover_orphans), name="aioflow-orphans"
                )

    def _drop_lost_leases(self) -> None:
        """Cancel the nodes whose leases could not be renewed for longer than the
        visibility timeout: another worker may have reclaimed and started them."""
        w = self.w
        unrenewed = time.monotonic() - self.last_renewal
        if unrenewed <= w.settings.visibility_timeout:
            return
        for m, task in list(w._inflight.values()):
            if not task.done() and m.cancelled is None:
                self._lose_lease(m, task, f"lease not renewed for {unrenewed:.0f} s")
        self._readers.parked.clear()  # ours no longer: the reclaim hands them to someone

    def _lose_lease(self, m: Msg, task: asyncio.Task[None], why: str) -> None:
        w = self.w
        log.warning(
            "cancelling vertex %s of run %s: %s (visibility_timeout=%g s)",
            m.addr,
            m.rid,
            why,
            w.settings.visibility_timeout,
            extra={"flow": m.flow.name, "run_id": str(m.rid), "vertex": m.addr},
        )
        self.lease_lost += 1
        w.metrics.lease_lost(m)
        m.cancelled = "lease_lost"
        task.cancel()
        task.add_done_callback(lambda _: self._lease_dropped(m))

    def _lease_dropped(self, m: Msg) -> None:
        w = self.w
        w.limits.done(m, fenced=True)
        w._release(m)

    async def _reclaim(self, min_idle_ms: int) -> None:
        w = self.w
        for stream in w._stream_list:
            free = w._free()
            if free <= 0 or w._stopping.is_set():
                return
            res: Any = await w.fast.execute(
                "XAUTOCLAIM", stream, keys.GROUP, w.consumer, min_idle_ms, "0-0", "COUNT", free
            )
            # 6.2 answers deleted entries as nil, 7.0 lists them apart: skip both
            entries = [e for e in (res[1] if res else []) if e and e[1] is not None]
            if entries:
                log.info("reclaimed %d idle messages on %s", len(entries), stream)
                await w._start(stream, entries, reclaimed=True)
