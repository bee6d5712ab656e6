"""What the client and the gateway share: submitting runs, waiting for them,
reading their state, steering them. Workers never need this module.

:class:`Engine` owns the connections and submits and waits itself (the per-run
path); it hands the rest to the modules that hold it: :mod:`.catalog` (which
definition a run uses), :mod:`.waiting`, :mod:`.runs`, :mod:`.steering`,
:mod:`.dead_letters`, :mod:`.bulk` and :mod:`.memory`."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aioflow.core import codec
from aioflow.core.errors import (
    AioflowError,
    InvalidCallbackUrl,
    RedisFull,
    RedisUnavailable,
)
from aioflow.core.settings import Settings
from aioflow.definitions.model import Flow
from aioflow.definitions.plan import Plan
from aioflow.definitions.priority import SUFFIX
from aioflow.definitions.priority import check as check_priority
from aioflow.definitions.status import RunState, Status
from aioflow.observability import tracing
from aioflow.observability.tracing import run_span
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.outage import REDIS_ERRORS, is_oom
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import Backend, Conn, RedisClient

from . import bulk, dead_letters, door, events, runs, steering, waiting
from . import registry as versions
from .catalog import Catalog
from .memory import memory_full
from .registry import FlowInfo, partitions_of
from .replicas import acknowledged
from .waiting import Outcome, Waiter, fetch_outcome, settle

__all__ = [
    "REDIS_ERRORS",
    "Engine",
    "FlowInfo",
    "Outcome",
    "Waiter",
    "check_callback_url",
    "fetch_outcome",
    "partitions_of",
    "register",
    "translate",
]


class _Translate:
    # a class, not @asynccontextmanager: this wraps every client call
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        # ResultTimeout is an OSError too: keep ours as they are
        if isinstance(exc, REDIS_ERRORS) and not isinstance(exc, AioflowError):
            raise RedisUnavailable(f"Redis is unavailable: {exc}") from exc
        if is_oom(exc):
            raise RedisFull(f"Redis is full: {exc}") from exc


_TRANSLATE = _Translate()


def translate() -> _Translate:
    """Turn Redis connection errors into :class:`RedisUnavailable` at the boundary."""
    return _TRANSLATE


def check_callback_url(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or len(url) > 2048:
        raise InvalidCallbackUrl(f"invalid callback URL {url!r}: expected http(s)://host/...")
    return url


async def register(redis: RedisClient, flows: Iterable[Flow], *, fast: Conn | None = None) -> None:
    """Record the flows' versions as served now and create their streams' consumer
    groups (see :mod:`aioflow.engine.registry`). ``fast`` (a started router) settles
    ``partitions="auto"``; without it that is 1."""
    await versions.register(redis, flows, seen=True, fast=fast)


def settings_options(settings: Settings) -> dict[str, Any]:
    """The arguments of :class:`Engine` that ``settings`` give."""
    return {
        "result_ttl": settings.result_ttl,
        "submit_replicas": settings.submit_replicas,
        "submit_replicas_timeout": settings.submit_replicas_timeout,
        "max_value": settings.max_value,
        "version_wait": settings.version_wait,
        "event_ttl": settings.event_ttl,
    }


class Engine:
    """Submit, wait for, inspect and steer runs on one Redis.

    ``clock`` returns seconds since the epoch; it is the one source of time, so
    tests can control it.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        result_ttl: float = 86400.0,
        clock: Callable[[], float] = time.time,
        tracing: bool = False,
        submit_replicas: int = 0,
        submit_replicas_timeout: float = 1.0,
        max_value: int | None = None,
        version_wait: float = 60.0,
        event_ttl: float = 86400.0,
        backend: Backend | None = None,
    ) -> None:
        # a backend given is shared (a worker's, say) and stays open on close()
        self._owns_backend = backend is None
        self.backend = backend or Backend(redis)
        self.submit_replicas = submit_replicas
        self.submit_replicas_timeout = submit_replicas_timeout
        self.max_value = max_value
        self.event_ttl = event_ttl
        self.fast = self.backend.fast  # submit and result reads: the per-run path
        self.pins = versions.Pins(self.backend, window=version_wait)
        self.catalog = Catalog(self.backend, self.pins)
        self.tracing = tracing
        self.result_ttl = result_ttl
        self.clock = clock
        self._waiter: Waiter | None = None
        self.on_submitted: Callable[[str], None] | None = None  # called per run created

    @classmethod
    def from_settings(cls, redis: RedisClient, settings: Settings, **kw: Any) -> Engine:
        """An engine that submits as ``settings`` say (result TTL, value limit, replica
        acknowledgement, version wait, event TTL); ``kw`` adds or overrides (clock, tracing,
        backend)."""
        return cls(redis, **{**settings_options(settings), **kw})

    @property
    def redis(self) -> RedisClient:
        """The redis-py client (a ``RedisCluster`` on a cluster, once started)."""
        return self.backend.redis

    @property
    def waiter(self) -> Waiter:
        if self._waiter is None:
            self._waiter = Waiter(self.backend.redis, self.fast)
        return self._waiter

    async def start(self) -> None:
        """Find out the Redis topology (done by every method on first use)."""
        await self.backend.start()

    async def close(self) -> None:
        if self._waiter is not None:
            await self._waiter.close()
        if self._owns_backend:
            await self.backend.aclose()
        if self.tracing:
            await tracing.flush()

    async def memory_full(self) -> list[str]:
        """The Redis masters that refuse writes for memory now, each as a line saying
        so (empty: none). A master refuses them while its used memory, less what Redis
        leaves out of the count (replication and AOF buffers), is over ``maxmemory``
        (the check Redis itself makes before a write). Raises Redis connection errors."""
        await self.start()
        return await memory_full(self.fast)

    # -- definitions: the catalog -------------------------------------------------

    async def flow_info(self, name: str) -> FlowInfo:
        return await self.catalog.flow_info(name)

    async def flows(self) -> list[FlowInfo]:
        return await self.catalog.flows()

    async def pin(self, flow: str | Flow, version: str | None = None) -> FlowInfo:
        """The definition a new run of ``flow`` pins: a Flow object's own version
        (registered if needed), ``version`` if given, else the newest served one."""
        return await self.catalog.pin(flow, version)

    async def run_id(self, run_id: str | RunId, flow: str | Flow | None = None) -> RunId:
        """The run that a run id argument names: a full run id as returned by
        :meth:`submit` (of ``flow`` when given), or the id its caller chose
        (``run_id=``, ``X-Run-Id``) with the ``flow`` it was submitted to,
        whatever that flow's partition count. Raises :class:`InvalidRunId` for
        a malformed id, a run id of another flow or a caller-chosen id without
        ``flow``; :class:`UnknownFlow` for a caller-chosen id of a flow nobody
        registered."""
        return await self.catalog.run_id(run_id, flow)

    async def new_run_id(
        self, flow: str, run_id: str | None = None, info: FlowInfo | None = None
    ) -> RunId:
        return await self.catalog.new_run_id(flow, run_id, info)

    async def plan(self, flow: str) -> Plan:
        return await self.catalog.plan(flow)

    async def run_plan(self, rid: RunId) -> Plan:
        """The plan of the version the run is pinned to (unpinned runs: the newest)."""
        return await self.catalog.run_plan(rid)

    # -- submitting and waiting: the per-run path --------------------------------

    async def submit(
        self,
        flow: str | Flow,
        data: Any = None,
        *,
        run_id: str | None = None,
        options: dict[str, list[str]] | None = None,
        delay: float | None = None,
        rid: RunId | None = None,
        callback_url: str | None = None,
        info: FlowInfo | None = None,
        priority: str | None = None,
    ) -> tuple[RunId, bool]:
        """Start a run; answers its id and whether it was created (False: it existed).
        The run pins ``info``'s version, else the one :meth:`pin` picks. Raises
        :class:`InvalidInput` when a held flow's entry rejects ``data`` (:mod:`.door`)."""
        prio = check_priority(priority)
        info = info or await self.catalog.pin(flow)
        if callback_url is not None:
            check_callback_url(callback_url)
        rid = rid or await self.catalog.new_run_id(info.name, run_id, info)
        now = self.clock()
        due = int((now + delay) * 1000) if delay else 0
        value = door.encode(self.catalog.held(info), data, self.max_value, info.name)
        traceparent = ""
        if self.tracing:
            with run_span(info.name, str(rid)) as traceparent:
                pass
        created = await SCRIPTS.call(
            self.fast,
            "submit",
            rid.stream_of(prio),
            rid.key,
            repr(now),
            value,
            codec.dumps(options or {}),
            due,
            len(info.entries),
            *info.entries,
            "1" if info.hooks or callback_url else "",
            callback_url or "",
            traceparent,
            info.version,
            SUFFIX[prio],
        )
        if created and self.on_submitted is not None:
            self.on_submitted(info.name)
        if self.submit_replicas:
            await acknowledged(self.fast, rid, self.submit_replicas, self.submit_replicas_timeout)
        return rid, bool(created)

    async def submit_many(
        self,
        flow: str | Flow,
        inputs: Iterable[Any],
        *,
        options: dict[str, list[str]] | None = None,
        run_ids: Sequence[str | None] | None = None,
    ) -> list[tuple[RunId, bool]]:
        """Start one run per input (see :func:`aioflow.engine.bulk.submit_many`)."""
        return await bulk.submit_many(self, flow, inputs, options=options, run_ids=run_ids)

    async def execute(
        self,
        flow: str | Flow,
        data: Any = None,
        *,
        timeout: float | None = None,
        run_id: str | None = None,
        options: dict[str, list[str]] | None = None,
        callback_url: str | None = None,
        priority: str | None = None,
    ) -> tuple[RunId, Outcome | None]:
        check_priority(priority)
        info = await self.catalog.pin(flow)
        rid = await self.catalog.new_run_id(info.name, run_id, info)
        await self.waiter.subscribe(keys.done_channel(rid.flow, rid.partition))
        fut = self.waiter.register(rid)
        try:
            _, created = await self.submit(
                info.name,
                data,
                options=options,
                rid=rid,
                callback_url=callback_url,
                info=info,
                priority=priority,
            )
            if not created:
                outcome = await fetch_outcome(self.fast, rid)
                if outcome is not None:
                    return rid, outcome
            return rid, await settle(self.fast, rid, fut, timeout)
        finally:
            self.waiter.unregister(rid, fut)

    async def wait(self, run_id: str | RunId, timeout: float | None = None) -> Outcome | None:
        """The run's outcome once it ends; None if ``timeout`` seconds pass first."""
        rid = run_id if isinstance(run_id, RunId) else RunId.parse(run_id)
        outcome = await fetch_outcome(self.fast, rid)
        if outcome is not None:  # finished already: no need to listen
            return outcome
        await self.waiter.subscribe(keys.done_channel(rid.flow, rid.partition))
        fut = self.waiter.register(rid)
        try:
            outcome = await fetch_outcome(self.fast, rid)
            if outcome is not None:
                return outcome
            return await settle(self.fast, rid, fut, timeout)
        finally:
            self.waiter.unregister(rid, fut)

    # a function, not a method calling one: it runs once per result
    unwrap = staticmethod(waiting.unwrap)

    # -- reading and steering runs -----------------------------------------------

    async def state(self, run_id: str | RunId) -> RunState:
        rid = run_id if isinstance(run_id, RunId) else RunId.parse(run_id)
        return await runs.state(self.backend, rid)

    async def runs(
        self,
        flow: str,
        *,
        status: Status | str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> tuple[list[RunState], str | None]:
        """Runs of a flow, newest first: a page of states and the cursor of the next page.

        Runs are ordered by (created, partition, key), all descending, so runs
        created at the same instant are neither skipped nor repeated across pages.
        Raises InvalidCursor for a cursor this method did not hand out.
        """
        info = await self.catalog.flow_info(flow)
        return await runs.page(
            self.backend, flow, info.partitions, status=status, limit=limit, cursor=cursor
        )

    async def control(self, run_id: str | RunId, action: str) -> Status:
        """Pause, resume or stop a run; raises InvalidTransition when not allowed."""
        rid = run_id if isinstance(run_id, RunId) else RunId.parse(run_id)
        return await steering.control(
            self.backend, rid, action, clock=self.clock, result_ttl=self.result_ttl
        )

    async def retry(self, run_id: str | RunId) -> int:
        """Rerun a failed run from its failed vertices; answers how many were enqueued."""
        rid = run_id if isinstance(run_id, RunId) else RunId.parse(run_id)
        return await steering.retry(self.backend, self.catalog, rid)

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters of every registered flow (at most ``limit`` each)."""
        return await dead_letters.newest(self.backend, self.catalog, limit)

    async def replay(self, dead_letter_id: str) -> str:
        """Replay a dead letter: its run (failed by it) reruns from its failed vertices
        and the entry leaves the dead-letter stream. Answers the run id."""
        return await dead_letters.replay(self.backend, self.catalog, dead_letter_id)

    # -- the world: events and signals (see :mod:`.events`) ------------------------

    async def send_event(
        self, name: str, data: Any = None, *, key: str | None = None, event_id: str | None = None
    ) -> dict[str, Any]:
        """Send event ``name`` (see :meth:`aioflow.Client.send_event`); answers
        ``{"resolved": n, "started": [run ids]}``."""
        door.check_event(self.catalog.held_flows(), name, data)
        await self.start()
        return await events.send_event(self, name, data, key=key, event_id=event_id)

    async def signal(self, run_id: str | RunId, vertex: str, data: Any = None) -> bool:
        """Resolve the run's waiting vertex with ``data`` (see :meth:`aioflow.Client.signal`)."""
        rid = run_id if isinstance(run_id, RunId) else RunId.parse(run_id)
        return await steering.signal(
            self.backend,
            self.catalog,
            rid,
            vertex,
            data,
            clock=self.clock,
            max_value=self.max_value,
        )
