"""A worker's side of flow versions: the messages of runs pinned to another
version of their flow.

The claim parks such a message for its version (on the pseudo-consumer
``v:<version>`` of its group) and the worker announces it on the control
channel; a worker serving that version adopts it up to its free slots and
starts it like a read message. On every housekeeping pass a worker marks its
versions seen, adopts what was parked for them, and fails the parked runs of
versions no live worker serves. The design is written down in
:mod:`aioflow.definitions.versions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from importlib import resources
from typing import Any, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aioflow.core.settings import Settings
from aioflow.definitions.model import Flow
from aioflow.definitions.versions import version_of
from aioflow.engine.registry import PSEUDO, live_beats, prune, refresh
from aioflow.store import keys
from aioflow.store.topology import Conn, RedisClient

log = logging.getLogger("aioflow.versions")


# -- the worker's side ----------------------------------------------------------------


def _lua(name: str) -> str:
    lua = resources.files("aioflow.store") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


class Host(Protocol):
    """What the versions need of the worker."""

    flows: dict[str, Flow]
    streams: dict[str, Flow]
    consumer: str
    settings: Settings
    fast: Conn
    ttl_ms: int
    _stopping: asyncio.Event

    @property
    def redis(self) -> RedisClient: ...
    def _free(self) -> int: ...
    def _start(self, stream: str, entries: list[Any], *, reclaimed: bool) -> Awaitable[None]: ...


class WorkerVersions:
    """A worker's versions: registration, seen marks, adopting and failing parked messages."""

    def __init__(self, worker: Host) -> None:
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
        for _, d in live_beats(beats, float("inf"), now):
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
