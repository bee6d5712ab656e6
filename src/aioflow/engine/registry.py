"""The registry of flow versions in Redis: registering a flow's definition
under its version, marking the versions served, dropping those nobody serves,
listing them, the :class:`Pins` through which a submitter finds the version
a new run pins, and the flows events start (``Flow(on_event=...)``). What a
version is: :mod:`aioflow.definitions.versions`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from aioflow.core import codec
from aioflow.core.settings import Settings
from aioflow.definitions.model import Flow
from aioflow.definitions.plan import compile_dag
from aioflow.definitions.versions import version_of
from aioflow.store import keys
from aioflow.store.topology import Backend, Conn, RedisClient

log = logging.getLogger("aioflow.versions")


PSEUDO = "v:"  # consumer-name prefix of parked messages' owners
# seconds a flow stays started by an event once no process serving it registers it
TRIGGER_TTL = 86400.0


@dataclass(frozen=True)
class FlowInfo:
    name: str
    partitions: int
    entries: tuple[str, ...]
    definition: dict[str, Any]
    hooks: bool = False
    version: str = ""  # empty for a definition registered before versions existed

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> FlowInfo:
        return cls(
            doc["name"],
            int(doc["partitions"]),
            tuple(doc["entries"]),
            doc["definition"],
            bool(doc.get("hooks")),
            str(doc.get("version") or ""),
        )


def partitions_of(flow: Flow, fast: Conn | None) -> int:
    """The flow's partition count, ``"auto"`` settled for this Redis (see :class:`Flow`)."""
    if isinstance(flow.partitions, int):
        return flow.partitions
    return fast.auto_partitions(flow.name) if fast is not None else 1


def fv_key(flow: str) -> str:
    return f"af:fv:{{{flow}}}"


def seen_key(flow: str) -> str:
    return f"af:fvseen:{{{flow}}}"


def flow_doc(flow: Flow, now: float, parts: int) -> dict[str, Any]:
    plan = compile_dag(flow)
    return {
        "name": flow.name,
        "version": version_of(flow),
        "registered": now,
        "partitions": parts,
        "entries": list(plan.entries),
        "hooks": flow.on_failure is not None or flow.finally_ is not None,
        "definition": {**flow.describe(), "partitions": parts},
        "schedules": [s.to_doc() for s in flow.schedules.values()],
    }


# -- the registry ---------------------------------------------------------------------


async def register(
    redis: RedisClient,
    flows: Iterable[Flow],
    *,
    seen: bool = True,
    now: float | None = None,
    fast: Conn | None = None,
) -> None:
    """Record each flow's version and create its streams' consumer groups.

    ``seen`` marks the versions as served now (workers, gateways); a client
    submitting a Flow object registers its definition without serving it.
    A version new to the registry becomes the flow's doc in ``af:flows``.
    ``fast`` (a started router) settles ``partitions="auto"``; without it that is 1.
    """
    now = time.time() if now is None else now
    for flow in flows:
        parts = partitions_of(flow, fast)
        doc = flow_doc(flow, now, parts)
        raw = codec.dumps(doc)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hsetnx(fv_key(flow.name), doc["version"], raw)
            if seen:
                pipe.zadd(seen_key(flow.name), {doc["version"]: now})
            pipe.hexists(keys.FLOWS, flow.name)
            for p in range(parts):
                for stream in keys.streams(flow.name, p):  # every priority's stream
                    pipe.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
            res = await pipe.execute(raise_on_error=False)
        if seen:
            await _triggers(redis, [flow], now)
        for r in res:
            if isinstance(r, ResponseError) and "BUSYGROUP" not in str(r):
                raise r
            if isinstance(r, Exception) and not isinstance(r, ResponseError):
                raise r
        if res[0] or not res[2 if seen else 1]:
            await redis.hset(keys.FLOWS, flow.name, raw)
        elif seen:
            # schedules are not part of the version (they do not change how a run
            # executes), but a deploy that changes them must take effect: the
            # process that starts serving the current version last brings its own
            cur: Any = await redis.hget(keys.FLOWS, flow.name)
            if cur is not None:
                old = codec.loads(cur)
                if (
                    old.get("version") == doc["version"]
                    and old.get("schedules") != doc["schedules"]
                ):
                    await redis.hset(keys.FLOWS, flow.name, raw)


async def refresh(
    redis: RedisClient,
    served: dict[str, str],
    now: float | None = None,
    docs: Iterable[Flow] = (),
    fast: Conn | None = None,
) -> None:
    """Mark ``{flow: version}`` as seen now; with ``docs``, also put back their
    definitions in case they were dropped while this process was away."""
    now = time.time() if now is None else now
    docs = list(docs)
    async with redis.pipeline(transaction=False) as pipe:
        for flow, v in served.items():
            pipe.zadd(seen_key(flow), {v: now})
        for f in docs:
            doc = flow_doc(f, now, partitions_of(f, fast))
            pipe.hsetnx(fv_key(f.name), version_of(f), codec.dumps(doc))
        await pipe.execute()
    await _triggers(redis, docs, now)


async def _triggers(redis: RedisClient, flows: Iterable[Flow], now: float) -> None:
    """Record that ``flows`` are started by their events (one zset per event name,
    on its slot): served flows refresh it, so a flow that stopped listening drops
    out after :data:`TRIGGER_TTL`, and the set itself expires once nobody serves."""
    pairs = [(name, f.name) for f in flows for name in f.on_event]
    if not pairs:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for name, flow in pairs:
            key = keys.event_triggers(name)
            pipe.zadd(key, {flow: now})
            pipe.zremrangebyscore(key, "-inf", now - TRIGGER_TTL)
            pipe.pexpire(key, int(TRIGGER_TTL * 1000))
        await pipe.execute()


_PRUNE = """
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
for _, v in ipairs(old) do
  redis.call('HDEL', KEYS[1], v)
  redis.call('ZREM', KEYS[2], v)
end
local n = #old
for _, v in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not redis.call('ZSCORE', KEYS[2], v) then
    local ok, doc = pcall(cjson.decode, redis.call('HGET', KEYS[1], v))
    if not ok or (tonumber(doc['registered']) or 0) < tonumber(ARGV[1]) then
      redis.call('HDEL', KEYS[1], v)
      n = n + 1
    end
  end
end
return n
"""


async def prune(redis: RedisClient, retention: float, now: float | None = None) -> int:
    """Drop the versions of every flow that no one served for ``retention`` seconds
    (versions never served: registered that long ago). Answers how many."""
    now = time.time() if now is None else now
    names: Any = await redis.hkeys(keys.FLOWS)
    script = redis.register_script(_PRUNE)
    n = 0
    for raw in names:
        name = raw.decode()
        dropped = int(
            await script(keys=[fv_key(name), seen_key(name)], args=[repr(now - retention)])
        )
        if dropped:
            log.info(
                "dropped %d version(s) of flow %r nobody served for %gs", dropped, name, retention
            )
        n += dropped
    return n


def live_beats(
    beats: dict[bytes, bytes], window: float, now: float
) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, raw in beats.items():
        with contextlib.suppress(ValueError, TypeError):
            d = codec.loads(raw)
            if now - float(d.get("beat", 0)) < window:
                out.append((name.decode(), d))
    return out


def _newest(
    docs: dict[str, dict[str, Any]], seen: dict[str, float], window: float, now: float
) -> str | None:
    live = [v for v, t in seen.items() if now - t < window and v in docs]
    if not live:
        return None
    return max(live, key=lambda v: (float(docs[v].get("registered", 0)), v))


async def listing(
    redis: RedisClient, flow: str, *, window: float, now: float | None = None
) -> dict[str, Any]:
    """``{"version": newest served, "versions": [...]}`` of one flow, newest registered first:
    each with its last-seen time, whether it is served, the live workers serving it and
    how many messages are parked waiting for one of them."""
    now = time.time() if now is None else now
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(fv_key(flow))
        pipe.zrange(seen_key(flow), 0, -1, withscores=True)
        pipe.hgetall(keys.WORKERS)
        pipe.hget(keys.FLOWS, flow)
        raw_docs, raw_seen, beats, current = await pipe.execute()
    docs = {v.decode(): codec.loads(d) for v, d in raw_docs.items()}
    seen = {v.decode(): float(t) for v, t in raw_seen}
    workers: dict[str, list[str]] = {}
    for name, d in live_beats(beats, window, now):
        v = (d.get("versions") or {}).get(flow)
        if v:
            workers.setdefault(v, []).append(name)
    parked: dict[str, int] = {}
    parts = max([int(d.get("partitions") or 1) for d in docs.values()] or [1])
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(parts):
            for stream in keys.streams(flow, p):
                pipe.xpending(stream, keys.GROUP)
        summaries = await pipe.execute(raise_on_error=False)
    for summary in summaries:
        for c in summary.get("consumers") or () if isinstance(summary, dict) else ():
            name = c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
            if name.startswith(PSEUDO):
                parked[name[len(PSEUDO) :]] = parked.get(name[len(PSEUDO) :], 0) + int(c["pending"])
    newest = _newest(docs, seen, window, now)
    if newest is None and current is not None:
        newest = codec.loads(current).get("version")
    versions = [
        {
            "version": v,
            "registered": d.get("registered"),
            "last_seen": seen.get(v),
            "served": v in seen and now - seen[v] < window,
            "workers": sorted(workers.get(v, [])),
            "parked": parked.get(v, 0),
            "partitions": d.get("partitions"),
        }
        for v, d in sorted(docs.items(), key=lambda kv: -float(kv[1].get("registered", 0)))
    ]
    return {"version": newest, "versions": versions}


class Pins:
    """The versions a submitter pins (engine side). Docs of a version never change,
    so they are cached for good; the newest served version for ``ttl`` seconds."""

    def __init__(self, backend: Backend, *, window: float, ttl: float = 1.0) -> None:
        self.backend = backend
        self.window = window
        self.ttl = ttl
        self._docs: dict[tuple[str, str], dict[str, Any]] = {}
        self._newest: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._registered: weakref.WeakKeyDictionary[Flow, str] = weakref.WeakKeyDictionary()

    async def doc(self, flow: str, version: str) -> dict[str, Any] | None:
        d = self._docs.get((flow, version))
        if d is None:
            await self.backend.start()
            raw: Any = await self.backend.redis.hget(fv_key(flow), version)
            if raw is None:
                return None
            d = self._docs[(flow, version)] = codec.loads(raw)
        return d

    async def newest(self, flow: str) -> dict[str, Any] | None:
        """The doc of the newest served version, None when no version is served."""
        now = time.time()
        hit = self._newest.get(flow)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        await self.backend.start()
        rows: Any = await self.backend.redis.zrangebyscore(
            seen_key(flow), repr(now - self.window), "+inf", withscores=True
        )
        seen = {v.decode(): float(t) for v, t in rows}
        docs: dict[str, dict[str, Any]] = {}
        for v in seen:
            d = await self.doc(flow, v)
            if d is not None:
                docs[v] = d
        best = _newest(docs, seen, self.window, now)
        found = docs[best] if best is not None else None
        self._newest[flow] = (now, found)
        return found

    async def ensure(self, flow: Flow) -> str:
        """Register ``flow``'s version (unless done by this process); answers it."""
        v = version_of(flow)
        if self._registered.get(flow) != v:
            await self.backend.start()
            await register(self.backend.redis, [flow], seen=False, fast=self.backend.fast)
            self._registered[flow] = v
        return v


async def keep_seen(backend: Backend, flows: Iterable[Flow], settings: Settings) -> None:
    """A gateway's part: mark its flows' versions seen, drop those nobody serves."""
    served = {f.name: version_of(f) for f in flows}
    every = max(0.05, min(settings.version_wait / 4, 5.0))
    last_prune = 0.0
    while True:
        await asyncio.sleep(every)
        try:
            await backend.start()
            await refresh(backend.redis, served)
            if time.monotonic() - last_prune > 5.0:
                last_prune = time.monotonic()
                await prune(backend.redis, settings.version_retention)
        except (RedisError, OSError) as e:
            log.debug("cannot refresh flow versions (%s)", e)
