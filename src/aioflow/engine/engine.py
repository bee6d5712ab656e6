"""What the client and the gateway share: submitting runs, waiting for them,
reading their state, steering them. Workers never need this module."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aioflow.core import codec
from aioflow.core.aio import cancel_and_wait
from aioflow.core.errors import (
    AioflowError,
    InvalidCallbackUrl,
    InvalidCursor,
    InvalidRunId,
    InvalidTransition,
    LimitExceeded,
    RedisFull,
    RedisUnavailable,
    ResultTimeout,
    RunFailed,
    RunNotFound,
    RunStopped,
    UnknownFlow,
    UnknownVersion,
)
from aioflow.core.settings import Settings
from aioflow.definitions.model import Flow
from aioflow.definitions.plan import Plan, compile_dag, dag_from_description
from aioflow.definitions.priority import SUFFIX
from aioflow.definitions.priority import check as check_priority
from aioflow.definitions.status import RunState, Status, parse_state
from aioflow.observability import tracing
from aioflow.observability.tracing import run_span
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.outage import REDIS_ERRORS, is_oom
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import Backend, Conn, RedisClient, Router, Subscriptions

from . import bulk
from . import registry as versions
from .registry import FlowInfo, partitions_of
from .replicas import acknowledged
from .rerun import rerun

log = logging.getLogger("aioflow")

DLQ_ID_RE = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


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


def _info_fields(reply: Any) -> dict[str, Any]:
    """An ``INFO`` reply as a dict: the lean connection's text, or what redis-py made of it."""
    if isinstance(reply, dict):
        return reply
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k: v.strip() for k, v in pairs}


def _parse_cursor(cursor: str) -> tuple[float, int, str]:
    try:
        score, part, key = cursor.split(":")
        value = float(score)
        if not math.isfinite(value) or not keys.RUN_KEY_RE.fullmatch(key):
            raise ValueError(cursor)
        return value, int(part), key
    except ValueError:
        raise InvalidCursor(f"invalid cursor {cursor!r}: pass the next_cursor of a page") from None


def check_callback_url(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or len(url) > 2048:
        raise InvalidCallbackUrl(f"invalid callback URL {url!r}: expected http(s)://host/...")
    return url


@dataclass(frozen=True)
class Outcome:
    """How a run ended: its status and the stored result (completed) or error JSON (failed)."""

    status: Status
    payload: bytes


async def register(redis: RedisClient, flows: Iterable[Flow], *, fast: Conn | None = None) -> None:
    """Record the flows' versions as served now and create their streams' consumer
    groups (see :mod:`aioflow.versions`). ``fast`` (a started router) settles
    ``partitions="auto"``; without it that is 1."""
    await versions.register(redis, flows, seen=True, fast=fast)


class Waiter:
    """Waits for runs to finish with no lost wake-up.

    One pub/sub connection subscribes to each partition's ``done`` channel once;
    a waiter registers its future *after* the subscription is confirmed and
    *before* it checks the run's status, so a completion can land in neither gap.
    After a reconnect every pending wait is checked again.
    """

    def __init__(self, redis: RedisClient, fast: Conn) -> None:
        self._redis = redis
        self._fast = fast
        # the lean subscriber where possible: redis-py's pub/sub costs ~100 us a message
        self._sub = Subscriptions(fast, self._on_event) if isinstance(fast, Router) else None
        self._ps = redis.pubsub() if self._sub is None else None
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._seen: dict[str, int] = {}
        self._waits: dict[tuple[str, str], list[asyncio.Future[Outcome]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._rechecks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        if self._sub is not None:
            await self._sub.aclose()
        if self._task is not None:
            await cancel_and_wait([self._task])
            with contextlib.suppress(asyncio.CancelledError, *REDIS_ERRORS):
                await self._task
        if self._ps is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._ps.aclose()

    async def subscribe(self, channel: str) -> None:
        fut = self._confirmed.get(channel)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._confirmed[channel] = fut
            try:
                if self._sub is not None:
                    await self._sub.subscribe(channel)
                else:
                    assert self._ps is not None
                    await self._ps.subscribe(channel)
                    if self._task is None:
                        self._task = asyncio.create_task(self._read(), name="aioflow-waiter")
            except BaseException:
                del self._confirmed[channel]
                raise
        if not fut.done():
            timeout = self._fast.timeout
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(fut)
            except TimeoutError:
                raise RedisUnavailable(
                    f"Redis did not confirm the subscription in {timeout:g} s"
                ) from None

    def register(self, rid: RunId) -> asyncio.Future[Outcome]:
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waits.setdefault((keys.done_channel(rid.flow, rid.partition), rid.key), []).append(
            fut
        )
        return fut

    def unregister(self, rid: RunId, fut: asyncio.Future[Outcome]) -> None:
        k = (keys.done_channel(rid.flow, rid.partition), rid.key)
        futs = self._waits.get(k)
        if futs is not None:
            with contextlib.suppress(ValueError):
                futs.remove(fut)
            if not futs:
                del self._waits[k]

    def _resolve(self, channel: str, key: str, outcome: Outcome) -> None:
        for fut in self._waits.pop((channel, key), []):
            if not fut.done():
                fut.set_result(outcome)

    async def _read(self) -> None:
        assert self._ps is not None
        backoff = 0.05
        while not self._closed:
            try:
                msg = await self._ps.get_message(timeout=1.0)
                backoff = 0.05
            except REDIS_ERRORS:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if msg is not None:
                self._on_event(msg["type"], msg["channel"], msg["data"])

    def _on_event(self, kind: bytes | str, channel_raw: bytes, data: Any) -> None:
        channel = channel_raw.decode()
        if kind in (b"message", "message", b"smessage", "smessage"):
            key, status, payload = data.split(b"\n", 2)
            self._resolve(channel, key.decode(), Outcome(Status(status.decode()), payload))
        elif kind in (b"subscribe", "subscribe", b"ssubscribe", "ssubscribe"):
            fut = self._confirmed.get(channel)
            if fut is not None and not fut.done():
                fut.set_result(None)
            self._seen[channel] = self._seen.get(channel, 0) + 1
            if self._seen[channel] > 1:  # a re-subscription after a reconnect
                task = asyncio.create_task(self._recheck(channel))
                self._rechecks.add(task)
                task.add_done_callback(self._rechecks.discard)
        elif kind == b"down":
            # no connection to the channel's node for longer than the Redis timeout
            # (conn.Subscriber): a wait on it could last forever, so it fails now
            err = RedisUnavailable(f"lost the subscription to Redis ({channel}); retry")
            for ch, key in [k for k in self._waits if k[0] == channel]:
                for waiting in self._waits.pop((ch, key), []):
                    if not waiting.done():
                        waiting.set_exception(err)

    async def _recheck(self, channel: str) -> None:
        for ch, key in list(self._waits):
            if ch != channel:
                continue
            flow, part = ch[4:].split("}")[0].split(":")
            try:
                outcome = await fetch_outcome(self._fast, RunId(flow, int(part), key))
            except REDIS_ERRORS:
                continue
            except RunNotFound as e:
                # after a failover: the run's submit was lost with the old master
                for fut in self._waits.pop((ch, key), []):
                    if not fut.done():
                        fut.set_exception(e)
                continue
            if outcome is not None:
                self._resolve(ch, key, outcome)


async def fetch_outcome(fast: Conn, rid: RunId) -> Outcome | None:
    """The outcome of a finished run, None while it runs; raises RunNotFound."""
    vals: Any = await fast.execute("HMGET", rid.run, "status", "result", "err", idempotent=True)
    status, result, err = vals
    if status is None:
        raise RunNotFound(f"run {rid} not found (it never existed or it expired)")
    st = Status(status.decode())
    if not st.finished:
        return None
    return Outcome(st, result if st is Status.COMPLETED else (err or b""))


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
        backend: Backend | None = None,
    ) -> None:
        # a backend given is shared (a worker's, say) and stays open on close()
        self._owns_backend = backend is None
        self.backend = backend or Backend(redis)
        self.submit_replicas = submit_replicas
        self.submit_replicas_timeout = submit_replicas_timeout
        self.max_value = max_value
        self.fast = self.backend.fast  # submit and result reads: the per-run path
        self.pins = versions.Pins(self.backend, window=version_wait)
        self.tracing = tracing
        self.result_ttl = result_ttl
        self.clock = clock
        self._waiter: Waiter | None = None
        self._flows: dict[str, FlowInfo] = {}
        self._pinned: dict[str, tuple[dict[str, Any], FlowInfo]] = {}  # newest doc -> info
        self.on_submitted: Callable[[str], None] | None = None  # called per run created

    @classmethod
    def from_settings(cls, redis: RedisClient, settings: Settings, **kw: Any) -> Engine:
        """An engine that submits as ``settings`` say (result TTL, value limit, replica
        acknowledgement, version wait); ``kw`` adds or overrides (clock, tracing,
        backend)."""
        opts: dict[str, Any] = {
            "result_ttl": settings.result_ttl,
            "submit_replicas": settings.submit_replicas,
            "submit_replicas_timeout": settings.submit_replicas_timeout,
            "max_value": settings.max_value,
            "version_wait": settings.version_wait,
        }
        return cls(redis, **{**opts, **kw})

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
        full: list[str] = []
        for addr in self.fast.masters:
            info = _info_fields(await self.fast.execute_on(addr, "INFO", "memory"))
            limit = int(info.get("maxmemory", 0))
            used = int(info.get("used_memory", 0)) - int(info.get("mem_not_counted_for_evict", 0))
            if limit and used > limit:
                where = f"{addr[0]}:{addr[1]}" if addr[0] else "Redis"
                full.append(f"{where} uses {used} bytes, over its maxmemory of {limit}")
        return full

    async def flow_info(self, name: str) -> FlowInfo:
        info = self._flows.get(name)
        if info is None:
            keys.check_flow_name(name)
            await self.start()
            raw: Any = await self.redis.hget(keys.FLOWS, name)
            if raw is None:
                raise UnknownFlow(
                    f"unknown flow {name!r}: no worker or gateway serving it has registered it"
                )
            info = FlowInfo.from_doc(codec.loads(raw))
            self._flows[name] = info
        return info

    async def flows(self) -> list[FlowInfo]:
        await self.start()
        raw: Any = await self.redis.hgetall(keys.FLOWS)
        return [FlowInfo.from_doc(codec.loads(doc)) for _, doc in sorted(raw.items())]

    async def pin(self, flow: str | Flow, version: str | None = None) -> FlowInfo:
        """The definition a new run of ``flow`` pins: a Flow object's own version
        (registered if needed), ``version`` if given, else the newest served one."""
        if isinstance(flow, Flow):
            version = await self.pins.ensure(flow)
            flow = flow.name
        keys.check_flow_name(flow)
        if version is not None:
            doc = await self.pins.doc(flow, version)
            if doc is None:
                raise UnknownVersion(f"flow {flow!r} has no version {version!r} in the registry")
            return FlowInfo.from_doc(doc)
        doc = await self.pins.newest(flow)
        if doc is None:
            return await self.flow_info(flow)
        hit = self._pinned.get(flow)
        if hit is None or hit[0] is not doc:  # the same doc while the pins cache holds it
            hit = self._pinned[flow] = (doc, FlowInfo.from_doc(doc))
        return hit[1]

    async def run_id(self, run_id: str | RunId, flow: str | Flow | None = None) -> RunId:
        """The run that a run id argument names: a full run id as returned by
        :meth:`submit` (of ``flow`` when given), or the id its caller chose
        (``run_id=``, ``X-Run-Id``) with the ``flow`` it was submitted to,
        whatever that flow's partition count. Raises :class:`InvalidRunId` for
        a malformed id, a run id of another flow or a caller-chosen id without
        ``flow``; :class:`UnknownFlow` for a caller-chosen id of a flow nobody
        registered."""
        name = flow.name if isinstance(flow, Flow) else flow
        if isinstance(run_id, RunId):
            if name is not None and run_id.flow != name:
                raise InvalidRunId(f"run id {run_id} does not belong to flow {name!r}")
            return run_id
        ref = keys.parse_run_ref(run_id, name)
        if isinstance(ref, RunId):
            return ref
        assert flow is not None and name is not None  # parse_run_ref saw to it
        now, before = await self._partition_counts(flow)
        parts = sorted({keys.partition_for(ref, n, caller_chosen=True) for n in {now, *before}})
        if len(parts) > 1:
            # versions with different partition counts: the run is where it was created
            rids = [RunId(name, p, ref) for p in parts]
            async with self.redis.pipeline(transaction=False) as pipe:
                for rid in rids:
                    pipe.exists(rid.run)
                found = await pipe.execute()
            for rid, there in zip(rids, found, strict=True):
                if there:
                    return rid
        # where a run submitted now with this id goes
        return RunId(name, keys.partition_for(ref, now, caller_chosen=True), ref)

    async def _partition_counts(self, flow: str | Flow) -> tuple[int, set[int]]:
        """The partition count a run of ``flow`` submitted now gets, and those of the
        flow's registered versions (older runs live under theirs)."""
        await self.start()
        if isinstance(flow, Flow):
            name, now = flow.name, partitions_of(flow, self.fast)
        else:
            name, now = flow, (await self.pin(flow)).partitions
        before: set[int] = set()
        raw: Any = await self.redis.hkeys(versions.fv_key(name))
        for v in raw:
            doc = await self.pins.doc(name, v.decode())
            if doc is not None:
                before.add(int(doc.get("partitions") or 1))
        return now, before

    async def new_run_id(
        self, flow: str, run_id: str | None = None, info: FlowInfo | None = None
    ) -> RunId:
        info = info or await self.flow_info(flow)
        if run_id is None:
            key = keys.new_key()
            part = keys.partition_for(key, info.partitions, caller_chosen=False)
        else:
            key = keys.check_run_key(run_id)
            part = keys.partition_for(key, info.partitions, caller_chosen=True)
        return RunId(flow, part, key)

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
        The run pins ``info``'s version, else the one :meth:`pin` picks."""
        prio = check_priority(priority)
        info = info or await self.pin(flow)
        if callback_url is not None:
            check_callback_url(callback_url)
        rid = rid or await self.new_run_id(info.name, run_id, info)
        now = self.clock()
        due = int((now + delay) * 1000) if delay else 0
        value = codec.encode(data)
        if self.max_value is not None and len(value) > self.max_value:
            raise LimitExceeded(
                f"the input is {len(value)} bytes, larger than max_value={self.max_value}: "
                f"no run of flow {info.name!r} was started"
            )
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
        """Start one run per input (see :func:`aioflow.bulk.submit_many`)."""
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
        info = await self.pin(flow)
        rid = await self.new_run_id(info.name, run_id, info)
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
            return rid, await self._await(rid, fut, timeout)
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
            return await self._await(rid, fut, timeout)
        finally:
            self.waiter.unregister(rid, fut)

    async def _await(
        self, rid: RunId, fut: asyncio.Future[Outcome], timeout: float | None
    ) -> Outcome | None:
        if timeout is None:  # the common case: no timer to arm (a wait per run)
            outcome = await fut
        else:
            try:
                async with asyncio.timeout(timeout):
                    outcome = await fut
            except TimeoutError:
                return None
        if outcome.status is Status.COMPLETED and not outcome.payload:
            # too large to travel in the notification: read it
            outcome = await fetch_outcome(self.fast, rid) or outcome
        return outcome

    def unwrap(self, rid: RunId | str, outcome: Outcome | None) -> Any:
        """The result of an outcome, or the exception it stands for."""
        if outcome is None:
            raise ResultTimeout(f"run {rid} did not finish in time")
        if outcome.status is Status.COMPLETED:
            return codec.decode(outcome.payload)
        if outcome.status is Status.STOPPED:
            raise RunStopped(str(rid))
        err = codec.loads(outcome.payload) if outcome.payload else {}
        raise RunFailed.from_error(str(rid), err)

    async def state(self, run_id: str | RunId) -> RunState:
        rid = run_id if isinstance(run_id, RunId) else RunId.parse(run_id)
        await self.start()
        h: Any = await self.redis.hgetall(rid.run)
        if not h or b"status" not in h:
            raise RunNotFound(f"run {rid} not found (it never existed or it expired)")
        return parse_state(str(rid), rid.flow, h)

    async def control(self, run_id: str | RunId, action: str) -> Status:
        """Pause, resume or stop a run; raises InvalidTransition when not allowed."""
        rid = run_id if isinstance(run_id, RunId) else RunId.parse(run_id)
        await self.start()
        res = await SCRIPTS.call(
            self.fast,
            "control",
            rid.stream,
            rid.key,
            action,
            repr(self.clock()),
            int(self.result_ttl * 1000),
        )
        code, status = res[0].decode(), res[1].decode()
        if code != "ok":
            if not status:
                raise RunNotFound(f"run {rid} not found (it never existed or it expired)")
            raise InvalidTransition(f"cannot {action} run {rid}: it is {status}")
        if action == "stop":
            await self.redis.publish(keys.CONTROL, f"stop {rid}")
        return Status(status)

    async def retry(self, run_id: str | RunId) -> int:
        """Rerun a failed run from its failed vertices; answers how many were enqueued."""
        rid = run_id if isinstance(run_id, RunId) else RunId.parse(run_id)
        return await rerun(self.redis, rid, await self.run_plan(rid))

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters of every registered flow (at most ``limit`` each)."""
        out: list[dict[str, Any]] = []
        for info in await self.flows():
            for p in range(info.partitions):
                rows: Any = await self.redis.xrevrange(f"{keys.tag(info.name, p)}:dlq", count=limit)
                for eid, f in rows:
                    g = {k.decode(): v for k, v in f.items()}
                    run_key = g.get("r", b"").decode()
                    out.append(
                        {
                            "id": f"{info.name}.{p}.{eid.decode()}",
                            "run_id": f"{info.name}.{p}.{run_key}" if run_key else None,
                            "vertex": g.get("a", b"").decode(errors="replace"),
                            "message_id": g.get("id", b"").decode(),
                            "reason": g.get("reason", b"").decode(errors="replace"),
                            "deliveries": int(g.get("deliveries", b"0")),
                            "at": float(g.get("at", b"0")),
                        }
                    )
        out.sort(key=lambda d: d["at"], reverse=True)
        return out

    async def replay(self, dead_letter_id: str) -> str:
        """Replay a dead letter: its run (failed by it) reruns from its failed vertices
        and the entry leaves the dead-letter stream. Answers the run id."""
        try:
            flow, part, eid = dead_letter_id.split(".", 2)
            keys.check_flow_name(flow)
            p = int(part)
            if not DLQ_ID_RE.fullmatch(eid) or any(int(x) >= 2**64 for x in eid.split("-")):
                raise ValueError(eid)
        except (ValueError, InvalidRunId):
            raise InvalidRunId(f"invalid dead letter id {dead_letter_id!r}") from None
        await self.start()
        rows: Any = await self.redis.xrange(f"{keys.tag(flow, p)}:dlq", eid, eid)
        if not rows:
            raise RunNotFound(f"no dead letter {dead_letter_id!r}")
        f = rows[0][1]
        if f.get(b"k") == b"?" or not f.get(b"r"):
            raise InvalidTransition(
                f"dead letter {dead_letter_id!r} is an undecodable message: it cannot be replayed"
            )
        rid = RunId(flow, p, f[b"r"].decode())
        await rerun(self.redis, rid, await self.run_plan(rid), on_dead_letter=eid)
        return str(rid)

    async def plan(self, flow: str) -> Plan:
        info = await self.flow_info(flow)
        return compile_dag(dag_from_description(info.definition["dag"]))

    async def run_plan(self, rid: RunId) -> Plan:
        """The plan of the version the run is pinned to (unpinned runs: the newest)."""
        await self.start()
        v: Any = await self.redis.hget(rid.run, "v")
        if not v:
            return await self.plan(rid.flow)
        doc = await self.pins.doc(rid.flow, v.decode())
        if doc is None:
            raise UnknownVersion(
                f"run {rid} is pinned to version {v.decode()} of flow {rid.flow!r}, "
                "which is no longer in the registry (nobody served it for version_retention)"
            )
        return compile_dag(dag_from_description(doc["definition"]["dag"]))

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
        info = await self.flow_info(flow)
        want = Status(status) if status else None
        limit = max(1, min(limit, 500))
        after = _parse_cursor(cursor) if cursor else None
        out: list[RunState] = []
        last: tuple[float, int, str] | None = None
        while len(out) < limit:
            batch: list[tuple[float, int, str]] = []
            for p in range(info.partitions):
                idx = f"{keys.tag(flow, p)}:i"
                if after is None:
                    top, extra = "+inf", 0
                else:
                    top, extra = (
                        repr(after[0]),
                        int(await self.redis.zcount(idx, after[0], after[0])),
                    )
                rows: Any = await self.redis.zrevrangebyscore(
                    idx, top, "-inf", start=0, num=limit + extra, withscores=True
                )
                for k, score in rows:
                    item = (float(score), p, k.decode())
                    if after is None or item < after:
                        batch.append(item)
            if not batch:
                last = None
                break
            batch.sort(reverse=True)
            batch = batch[:limit]
            async with self.redis.pipeline(transaction=False) as pipe:
                for _, p, k in batch:
                    pipe.hgetall(RunId(flow, p, k).run)
                hashes = await pipe.execute()
            for item, h in zip(batch, hashes, strict=True):
                after = last = item
                if not h or b"status" not in h:
                    continue
                st = parse_state(str(RunId(flow, item[1], item[2])), flow, h)
                if want is None or st.status is want:
                    out.append(st)
                    if len(out) == limit:
                        break
        if len(out) < limit or last is None:
            return out, None
        return out, f"{last[0]!r}:{last[1]}:{last[2]}"
