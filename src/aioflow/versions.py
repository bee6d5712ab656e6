"""Flow versions: what a definition's version is, the registry of the versions
that are served, and how a worker leaves other versions' messages alone.

Design
------
**Version.** The first 12 hex digits of the SHA-256 of the canonical JSON
(sorted keys, vertices and edges sorted) of the flow's shape: what
``Flow.describe()`` gives (vertices and their kinds, retries, timeouts, which
aggregates, ``on_failure`` and ``forward`` functions exist, edges and their
``data`` flag, nested dags, branch conditions, entries, exits, partitions),
plus each node's full retry policy and whether the flow has hooks. Code is not
hashed: a new function body under the same shape keeps the version.

**Registry.** Off the hot path, with redis-py; every command names one key, or
two keys of one hash tag ``{flow}`` (one Cluster slot)::

    af:flows             hash  name -> the newest registered doc (listing, unknown flows)
    af:fv:{<flow>}       hash  version -> doc {name, version, registered, partitions,
                               entries, hooks, definition}; written once (HSETNX)
    af:fvseen:{<flow>}   zset  version -> last time a worker or gateway serving it was seen
    af:workers           hash  worker heartbeats list ``"versions": {flow: version}``

Workers refresh their versions' score every housekeeping pass, gateways every
few seconds. A version not seen for ``version_retention`` is dropped (one
script over the two keys of its flow). ``registered`` is the time a version
first entered the registry.

**Pinning.** ``submit.lua`` stores the version in the run hash (``v``). A Flow
object pins its own version; a name pins the *newest served* version: among
the versions seen within ``version_wait`` seconds, the one registered last
(none seen: the one ``af:flows`` holds). Runs without ``v`` (older clients)
run on any version.

**Other versions' messages.** ``claim.lua`` gets the worker's version of the
stream's flow and compares it with the run's ``v``. On a difference it parks
the message: ``XCLAIM`` to the pseudo-consumer ``v:<version>`` of the same
group, ``JUSTID`` with ``RETRYCOUNT`` one less than the deliveries, which
undoes the read's count. The message so stays in the stream's pending list:
nothing is lost if anyone dies, trimming never passes it, ``max_deliveries``
does not move, no slot is held and nobody polls it. The parking worker
publishes ``adopt <version> <stream>`` on ``af:ctl``; a worker serving that
version (also on every housekeeping pass, for a missed message) adopts it up
to its free slots with the ``adopt`` script, which moves only entries still
owned by the pseudo-consumer (two adopters never both get one), and starts it
like a read message. ``XAUTOCLAIM`` cannot skip consumers: a message parked
longer than ``visibility_timeout`` is reclaimed like any idle one; a worker of
its version runs it, another parks it again (undoing that count too). Fencing
is unchanged: completions check the owner of the pending entry.

**Failing.** A version is *live* while a worker heartbeat within
``version_wait`` lists it. Every housekeeping pass a worker looks at the
pseudo-consumers of its streams (``XINFO CONSUMERS``); for a version that is
not live, the ``vfail`` script fails each parked message's run whose last
chance, ``max(last beat of a worker serving it, run created) +
version_wait``, has passed (error type ``VersionUnavailable`` naming the flow,
the version and the live versions), and acks messages of runs that ended.
Flow hooks and callbacks of an ended run (``$final``) are not version-checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import weakref
from collections.abc import Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import codec, keys
from .model import Dag, Flow
from .plan import compile_dag
from .settings import Settings
from .topology import Backend, Conn, RedisClient

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("aioflow.versions")

PSEUDO = "v:"  # consumer-name prefix of parked messages' owners
_cache: weakref.WeakKeyDictionary[Dag, tuple[Any, str]] = weakref.WeakKeyDictionary()


def fv_key(flow: str) -> str:
    return f"af:fv:{{{flow}}}"


def seen_key(flow: str) -> str:
    return f"af:fvseen:{{{flow}}}"


# -- the version of a definition ------------------------------------------------------


def _canonical(d: dict[str, Any]) -> dict[str, Any]:
    out = dict(d)
    if "vertices" in out:
        vs = []
        for v in out["vertices"]:
            v = dict(v)
            if v.get("timeout") is not None:
                v["timeout"] = float(v["timeout"])
            if "dag" in v:
                v["dag"] = _canonical(v["dag"])
            if "branches" in v:
                v["branches"] = {c: _canonical(b) for c, b in v["branches"].items()}
                v["conditions"] = sorted(v["conditions"])
            vs.append(v)
        out["vertices"] = sorted(vs, key=lambda v: v["name"])
        out["edges"] = sorted(out["edges"], key=lambda e: (e["from"], e["to"]))
        out["entries"] = sorted(out["entries"])
        out["exits"] = sorted(out["exits"])
    return out


def _policies(dag: Dag, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, v in dag.vertices.items():
        r = v.retry
        out[prefix + name] = [
            r.retries,
            float(r.backoff),
            float(r.multiplier),
            float(r.max_delay),
            float(r.jitter),
            sorted(f"{c.__module__}.{c.__qualname__}" for c in r.retry_on),
        ]
        if v.dag is not None:
            out.update(_policies(v.dag, f"{prefix}{name}/"))
        for c, b in v.branches.items():
            out.update(_policies(b, f"{prefix}{name}[{c}]/"))
    return out


def shape(flow: Flow) -> dict[str, Any]:
    """What the version hashes: the canonical description plus what it leaves out."""
    doc = _canonical(flow.describe())
    doc["dag"] = _canonical(doc["dag"])
    doc["retry"] = _policies(flow)
    doc["hooks"] = [flow.on_failure is not None, flow.finally_ is not None]
    return doc


def version_of(flow: Flow) -> str:
    """The version of ``flow``: 12 hex digits of the SHA-256 of its canonical shape."""
    plan = compile_dag(flow)
    hit = _cache.get(flow)
    if hit is not None and hit[0] is plan:
        return hit[1]
    v = hashlib.sha256(orjson.dumps(shape(flow), option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
    _cache[flow] = (plan, v)
    return v


def _partitions(flow: Flow, fast: Conn | None) -> int:
    from .engine import partitions_of  # engine imports this module

    return partitions_of(flow, fast)


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
        parts = _partitions(flow, fast)
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
    async with redis.pipeline(transaction=False) as pipe:
        for flow, v in served.items():
            pipe.zadd(seen_key(flow), {v: now})
        for f in docs:
            doc = flow_doc(f, now, _partitions(f, fast))
            pipe.hsetnx(fv_key(f.name), version_of(f), codec.dumps(doc))
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


def _live_beats(
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
    for name, d in _live_beats(beats, window, now):
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


# -- the worker's side ----------------------------------------------------------------


def _lua(name: str) -> str:
    lua = resources.files("aioflow") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


class WorkerVersions:
    """A worker's versions: registration, seen marks, adopting and failing parked messages."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.served = {name: version_of(f) for name, f in worker.flows.items()}
        self._source = {name: _lua(name) for name in ("adopt", "vfail")}
        self.parked_count = 0  # messages left for other versions (for tests and metrics)
        self.adopted_count = 0
        self._wake: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._pruned = 0.0
        self._publishing: set[asyncio.Future[Any]] = set()

    async def _script(self, name: str, stream: str, *args: Any) -> Any:
        # redis-py's Script: EVALSHA, loading on NOSCRIPT, routed by key on a cluster
        script = self.w.redis.register_script(self._source[name])
        return await script(keys=[stream], args=list(args))

    def version_of_stream(self, stream: str) -> str | None:
        flow = self.w.streams.get(stream)
        return self.served[flow.name] if flow is not None else None

    def parked(self, stream: str, versions: dict[str, int]) -> None:
        """Messages of ``stream`` were parked for ``versions`` (version -> how many):
        tell their workers."""
        self.parked_count += sum(versions.values())
        for v in versions:
            task = asyncio.ensure_future(self.w.redis.publish(keys.CONTROL, f"adopt {v} {stream}"))
            self._publishing.add(task)
            task.add_done_callback(self._published)

    def _published(self, task: asyncio.Future[Any]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("cannot announce parked messages (%s)", task.exception())

    def wake(self, arg: str) -> None:
        """An ``adopt <version> <stream>`` control message."""
        version, _, stream = arg.partition(" ")
        if self.version_of_stream(stream) != version or self.w._stopping.is_set():
            return
        self._wake.add(stream)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._adopt_woken())

    async def _adopt_woken(self) -> None:
        while self._wake:
            stream = self._wake.pop()
            with contextlib.suppress(RedisError, OSError):
                await self.adopt(stream)

    async def adopt(self, stream: str) -> int:
        # like reclaiming: the slots a blocked read reserved are not held by work yet
        free = self.w._free()
        mine = self.version_of_stream(stream)
        if free <= 0 or mine is None or self.w._stopping.is_set():
            return 0
        pseudo = PSEUDO + mine
        pending: Any = await self.w.redis.xpending_range(
            stream, keys.GROUP, min="-", max="+", count=free, consumername=pseudo
        )
        ids = [p["message_id"] for p in pending]
        if not ids:
            return 0
        entries: Any = await self._script("adopt", stream, pseudo, self.w.consumer, *ids)
        if entries:
            self.adopted_count += len(entries)
            log.info(
                "adopted %d message(s) parked for version %s on %s",
                len(entries),
                pseudo[2:],
                stream,
            )
            await self.w._start(stream, entries, reclaimed=False)
        return len(entries or ())

    async def tick(self, *, slow: bool) -> None:
        """One housekeeping pass: mark versions seen, adopt ours, fail dead ones."""
        try:
            await self._tick(slow)
        except (RedisConnectionError, RedisTimeoutError, OSError, OutOfMemoryError):
            raise  # the housekeeping loop waits for Redis (away, or full)
        except Exception:  # never let it end the worker's housekeeping
            log.exception("version housekeeping failed")

    async def _tick(self, slow: bool) -> None:
        now = time.time()
        docs = self.w.flows.values() if slow else ()
        await refresh(self.w.redis, self.served, now, docs, self.w.fast)
        retention = self.w.settings.version_retention
        if time.monotonic() - self._pruned > min(5.0, retention / 4):
            self._pruned = time.monotonic()
            await prune(self.w.redis, retention, now)
        since: dict[str, dict[str, float]] | None = None
        for stream, flow_of in self.w.streams.items():
            mine = self.served[flow_of.name]
            consumers: Any = await self.w.redis.xinfo_consumers(stream, keys.GROUP)
            for c in consumers:
                name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                if not name.startswith(PSEUDO) or not c["pending"]:
                    continue
                v = name[len(PSEUDO) :]
                if v == mine:
                    await self.adopt(stream)
                    continue
                if since is None:
                    since = await self._since(now)
                flow = self.w.streams[stream].name
                await self._fail(stream, flow, v, since.get(flow, {}), now)

    async def _since(self, now: float) -> dict[str, dict[str, float]]:
        """flow -> version -> last heartbeat of a worker serving it."""
        beats: Any = await self.w.redis.hgetall(keys.WORKERS)
        out: dict[str, dict[str, float]] = {}
        for _, d in _live_beats(beats, float("inf"), now):
            for flow, v in (d.get("versions") or {}).items():
                t = float(d.get("beat", 0))
                if t > out.setdefault(flow, {}).get(v, 0.0):
                    out[flow][v] = t
        return out

    async def _fail(
        self, stream: str, flow: str, v: str, since: dict[str, float], now: float
    ) -> None:
        wait = self.w.settings.version_wait
        last = since.get(v, 0.0)
        if now - last < wait:
            return  # a worker serving it beat lately: it will adopt them
        live = sorted(u for u, t in since.items() if now - t < wait)
        pseudo = PSEUDO + v
        pending: Any = await self.w.redis.xpending_range(
            stream, keys.GROUP, min="-", max="+", count=500, consumername=pseudo
        )
        ids = [p["message_id"] for p in pending]
        if not ids:
            return
        message = (
            f"no live worker serves version {v} of flow {flow!r} (waited version_wait={wait:g}s); "
            f"versions served: {', '.join(live) if live else 'none'}"
        )
        failed = await self._script(
            "vfail", stream, pseudo, repr(now), self.w.ttl_ms, repr(wait), repr(last), message, *ids
        )
        if failed:
            log.error("failed %d run(s) of flow %r: %s", failed, flow, message)


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
