"""Ticking schedules: one run per tick, however many processes tick.

Every worker and gateway runs :func:`ticking` for the flows it serves. Each
pass reads the flows' *registered* schedules (so a deploy that changes or
removes one takes effect everywhere), submits every due tick as a run whose id
is derived from (schedule, tick time), then raises the schedule's "last tick
done" mark. The caller-chosen-id dedup turns every submission of a tick after
the first into a no-op, so processes need no lock or leader; a process that
dies between submitting and raising the mark leaves the tick to the others,
whose submission of it is again a no-op.

State lives in keys of its own, touched by single-key commands only (so any
Redis Cluster slot will do): ``af:sched:<flow>`` (zset, name -> last tick
done in epoch ms, only ever raised: ``ZADD GT``) and ``af:sched:<flow>:paused``.

A tick is *missed* when it fell before this process began ticking (or began
again after losing Redis): of those, the ``catch_up`` most recent run and the
rest are skipped. A process already ticking fires every tick it sees due.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import OutOfMemoryError

from aioflow.core import codec
from aioflow.core.clock import wait
from aioflow.core.errors import AioflowError, UnknownFlow, UnknownSchedule
from aioflow.definitions.ticks import Schedule, tick_key
from aioflow.store import keys
from aioflow.store.outage import REDIS_ERRORS, Episode
from aioflow.store.topology import RedisClient

from .engine import Engine
from .registry import FlowInfo

__all__ = ["ScheduleState", "pause", "resume", "started", "states", "ticking"]

log = logging.getLogger("aioflow.schedule")

REFRESH = 5.0  # real seconds between reads of the registered schedules


def _ms(t: float) -> int:
    return math.floor(t * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class ScheduleState:
    """A registered schedule and where it stands: ``paused``, ``last_tick`` (the
    latest tick done or skipped, epoch seconds) and ``next_tick`` (None while
    paused)."""

    flow: str
    schedule: Schedule
    paused: bool
    last_tick: float | None
    next_tick: float | None

    @property
    def name(self) -> str:
        return self.schedule.name

    def to_json(self) -> dict[str, Any]:
        doc = self.schedule.to_doc()
        doc.update(
            flow=self.flow,
            paused=self.paused,
            last_tick=self.last_tick,
            next_tick=self.next_tick,
            next_tick_at=_iso(round(self.next_tick * 1000)) if self.next_tick else None,
        )
        return doc


def _parse(flow: str, raw: Any) -> tuple[FlowInfo, list[Schedule]] | None:
    if raw is None:
        return None
    doc = codec.loads(raw)
    out = []
    for d in doc.get("schedules", ()):
        try:
            out.append(Schedule.from_doc(d))
        except (AioflowError, KeyError, TypeError, ValueError) as e:
            log.error("flow %s: registered schedule %r is unreadable here: %s", flow, d, e)
    return FlowInfo.from_doc(doc), out


async def _state(redis: RedisClient, flow: str) -> tuple[dict[str, int], set[str]]:
    rows: Any = await redis.zrange(keys.schedules(flow), 0, -1, withscores=True)
    paused: Any = await redis.smembers(keys.paused_schedules(flow))
    last = {k.decode(): int(score) for k, score in rows}
    return last, {p.decode() for p in paused}


async def states(engine: Engine, flow: str) -> list[ScheduleState]:
    """The registered schedules of ``flow`` and their state; raises UnknownFlow."""
    keys.check_flow_name(flow)
    await engine.start()
    redis, clock = engine.redis, engine.clock
    parsed = _parse(flow, await redis.hget(keys.FLOWS, flow))
    if parsed is None:
        raise UnknownFlow(
            f"unknown flow {flow!r}: no worker or gateway serving it has registered it"
        )
    last, paused = await _state(redis, flow)
    now = _ms(clock())
    out = []
    for s in parsed[1]:
        done = last.get(s.name)
        p = s.name in paused
        nxt = None if p else s.next_after(max(now, done or now)) / 1000
        out.append(ScheduleState(flow, s, p, None if done is None else done / 1000, nxt))
    return out


async def _find(engine: Engine, flow: str, name: str) -> ScheduleState:
    for st in await states(engine, flow):
        if st.name == name:
            return st
    raise UnknownSchedule(f"flow {flow!r} has no schedule {name!r} in its registered definition")


async def pause(engine: Engine, flow: str, name: str) -> ScheduleState:
    """Stop ticking ``name`` until :func:`resume`; raises UnknownFlow, UnknownSchedule."""
    await _find(engine, flow, name)
    await engine.redis.sadd(keys.paused_schedules(flow), name)
    return await _find(engine, flow, name)


async def resume(engine: Engine, flow: str, name: str) -> ScheduleState:
    """Tick ``name`` again from now on: the ticks that fell while it was paused
    are skipped (not caught up). Raises UnknownFlow, UnknownSchedule."""
    await _find(engine, flow, name)
    await engine.redis.zadd(keys.schedules(flow), {name: _ms(engine.clock())}, gt=True)
    await engine.redis.srem(keys.paused_schedules(flow), name)
    return await _find(engine, flow, name)


def _missed(s: Schedule, done: int, since: int) -> list[int]:
    """The ``catch_up`` most recent ticks in ``(done, since)``, looking back in
    doubling windows so that a long outage costs no scan of all its ticks."""
    if s.catch_up == 0 or done >= since - 1:
        return []
    span = 60_000
    while True:
        start = max(done, since - 1 - span)
        found = s.ticks(start, since - 1)
        if len(found) >= s.catch_up or start == done:
            return found[-s.catch_up :]
        span *= 4


_running: weakref.WeakSet[Scheduler] = weakref.WeakSet()


def started(backend: object) -> bool:
    """Whether a scheduler of this process ticking on ``backend`` (a worker's
    :class:`~aioflow.topology.Backend`) has made its first pass: the ticks it fires
    from now on are those after the clock's reading then. The testing kit waits
    for it before a test may move its fake clock."""
    return any(s.backend is backend and s.since is not None for s in list(_running))


class Scheduler:
    """Fires the due ticks of ``flows``' registered schedules (see the module).
    ``redis`` is the client given to the Worker or gateway; ``engine``, when given, is
    used instead of one of its own (and not closed)."""

    def __init__(
        self,
        redis: RedisClient,
        flows: Iterable[str],
        clock: Callable[[], float],
        *,
        engine: Engine | None = None,
    ) -> None:
        self.flows = sorted(set(flows))
        self.clock = clock
        self._owned = engine is None
        self._engine: Engine | None = engine or Engine(redis, clock=clock)
        self.backend = self._engine.backend
        self.since: int | None = None  # ms: ticking without a break since then
        self._read: float | None = None  # the clock reading the last pass went by
        self.fired = 0  # tick submissions that created a run (for tests)

    async def aclose(self) -> None:
        if self._owned and self._engine is not None:
            await self._engine.close()
            self._engine = None

    async def run(self) -> None:
        """Tick until cancelled; Redis errors count as a break (see the module). A
        cancel can be lost inside redis-py on Python 3.11: cancel it with
        :func:`aioflow.core.aio.cancel_and_wait`, as the worker and the gateway do."""
        episode = Episode(log, "schedules")
        _running.add(self)
        try:
            while True:
                try:
                    seconds = await self.tick()
                    episode.ok()
                except (*REDIS_ERRORS, OutOfMemoryError) as e:
                    self.since = None
                    seconds = episode.failed(e)
                await wait(self.clock, None, seconds, poll=REFRESH, since=self._read)
        finally:
            _running.discard(self)
            await self.aclose()

    async def tick(self) -> float | None:
        """Fire what is due now; answers seconds on the clock until the next
        tick of any schedule (None: no schedule to tick)."""
        if not self.flows:
            return None
        assert self._engine is not None
        await self._engine.start()
        redis = self._engine.redis
        raw: Any = await redis.hmget(keys.FLOWS, self.flows)
        self._read = self.clock()
        now = _ms(self._read)
        if self.since is None:
            self.since = now
        nxt: int | None = None
        for flow, doc in zip(self.flows, raw, strict=True):
            parsed = _parse(flow, doc)
            if parsed is None or not parsed[1]:
                continue
            info, scheds = parsed
            last, paused = await _state(redis, flow)
            for s in scheds:
                if s.name in paused:
                    continue
                done = last.get(s.name)
                if done is None:  # a new schedule: it ticks from now on
                    await redis.zadd(keys.schedules(flow), {s.name: now}, nx=True)
                    done = now
                due = _missed(s, done, self.since) + s.ticks(max(done, self.since - 1), now)
                if due:
                    await self._fire(info, s, due)
                t = s.next_after(now)
                nxt = t if nxt is None else min(nxt, t)
        if nxt is None:
            return None
        return (nxt - now) / 1000 + 0.001

    async def _fire(self, info: FlowInfo, s: Schedule, due: list[int]) -> None:
        assert self._engine is not None
        # the registered definition just read, not one cached before a deploy
        self._engine.catalog.remember(info)
        for t in due:
            _, created = await self._engine.submit(
                info.name,
                s.data,
                run_id=tick_key(s.name, t),
                options={"schedule": [s.name], "tick": [_iso(t)]},
            )
            if created:
                self.fired += 1
                log.info("schedule %s of flow %s: run for tick %s", s.name, info.name, _iso(t))
        # after the runs exist: a crash before this leaves the ticks to the others
        await self._engine.redis.zadd(keys.schedules(info.name), {s.name: due[-1]}, gt=True)


async def ticking(engine: Engine, flows: Iterable[str]) -> None:
    """Tick the schedules of ``flows`` until cancelled, submitting through ``engine``
    (a worker's, on its own connections: no second cluster client or discovery)."""
    await Scheduler(engine.backend.given, flows, engine.clock, engine=engine).run()
