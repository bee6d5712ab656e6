"""The starter: turns read messages into running nodes.

Per batch of messages read from one stream it makes one round trip, the
``claim`` script: status and dedup checks, the attempt count, the join inputs
and what the node reads of its run. What the claim answers ``go`` for is
launched into a slot of the worker (or waits for its global limits); a message
of a run pinned to another version of the flow is parked for that version
(:mod:`aioflow.worker.parking`), one delivered too often is dead-lettered.
Messages are acked only by the scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from aioflow.core.settings import Settings
from aioflow.definitions.model import Flow
from aioflow.definitions.plan import Plan, resolve
from aioflow.definitions.waits import WAITS
from aioflow.observability.metrics import WorkerMetrics
from aioflow.store import keys
from aioflow.store.outage import Episode, is_oom
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import Conn

from .limits import Limits
from .parking import WorkerVersions
from .transient import TRANSIENT
from .vertex import FINAL, Executor, Msg
from .vertex import marker as default_marker
from .waits import split_timer

log = logging.getLogger("aioflow.worker")


class Host(Protocol):
    """What the starter needs of the worker."""

    streams: dict[str, Flow]
    plans: dict[str, Plan]
    clock: Callable[[], float]
    consumer: str
    settings: Settings
    ttl_ms: int
    fast: Conn
    tracing: bool
    executor: Executor
    versions: WorkerVersions
    limits: Limits
    metrics: WorkerMetrics
    _stopping: asyncio.Event

    def _launch(self, m: Msg, now: float) -> None: ...


class Starter:
    """Claims read messages and launches them (:meth:`start`, one batch of a stream)."""

    def __init__(self, worker: Host, *, episode: Episode) -> None:
        self.w = worker
        self.claiming = episode

    async def start(self, stream: str, entries: list[Any], *, reclaimed: bool) -> None:
        """Claim read ``entries`` of ``stream`` and launch the nodes the claim lets run."""
        w = self.w
        flow = w.streams[stream]
        plan = w.plans[flow.name]
        now = w.clock()
        args: list[Any] = [
            w.consumer,
            repr(now),
            w.settings.max_deliveries,
            w.ttl_ms,
            w.versions.served[flow.name],
        ]
        msgs: list[Msg | bytes] = []
        for entry in entries:
            if entry is None or entry[1] is None:
                continue  # deleted from the stream while pending
            mid, f = entry
            if not isinstance(f, dict):  # a raw reply: [field, value, field, value, ...]
                f = dict(zip(f[::2], f[1::2], strict=False))
            try:
                uid = f[b"r"].decode()
                addr = f[b"a"].decode()
                kind = f.get(b"k", b"n").decode()
                if kind == "f":
                    rplan, node, scope = plan, FINAL, ""
                else:
                    rplan, node, scope = resolve(plan, addr)
                if kind not in ("n", "c", "f") and not (kind in ("e", "t") and node.kind in WAITS):
                    raise ValueError(kind)
                if kind == "c" and node.kind not in ("subdag", "branch", "foreach"):
                    raise ValueError(kind)
            except Exception:  # dead-lettered, unless its run is pinned to another version
                u = f.get(b"r", b"") if isinstance(f, dict) else b""
                a = f.get(b"a", b"") if isinstance(f, dict) else b""
                args += [
                    mid,
                    u if keys.RUN_KEY_RE.fullmatch(u.decode("latin-1")) else b"",
                    a,
                    "?",
                    "",
                    "0",
                    0,
                ]
                msgs.append(mid)
                continue
            m = Msg(stream, mid, flow, rplan, node, scope, uid, addr, kind, f.get(b"d"))
            check = "1" if reclaimed else "0"
            if kind == "t":  # a timer: the attempt it is for, then the vertex's data
                timer, m.data = split_timer(m.data)
                check = f"{check}:{timer}"
            fetch = w.executor.fetch_fields(m)
            args += [
                mid,
                uid,
                addr,
                kind,
                default_marker(m),
                check,
                len(fetch),
                *fetch,
            ]
            msgs.append(m)
        if not msgs:
            return
        # messages count against concurrency from the moment they are read
        res = await self._claim(stream, args, msgs, reclaimed=reclaimed)
        if res is None:
            return
        other: dict[str, int] = {}
        limited: list[Msg] = []
        for mm, r in zip(msgs, res, strict=True):
            code = r[0]
            if code == b"other":
                v = r[1].decode()
                other[v] = other.get(v, 0) + 1
                continue
            if not isinstance(mm, Msg):
                log.error("undecodable message %s on %s: dead-lettered", mm, stream)
                continue
            m = mm
            if code == b"go":
                m.attempt = int(r[1])
                m.fetched = list(r[2:])
                if w.tracing:
                    m.trace = m.fetched.pop()
                if w.limits.applies(m):
                    limited.append(m)
                else:
                    w._launch(m, now)
            elif code == b"dead":
                ended = r[1] == b"failed"
                log.warning(
                    "vertex %s of run %s dead-lettered: message %s delivered more than "
                    "max_deliveries=%d times%s",
                    m.addr,
                    m.rid,
                    m.id.decode(),
                    w.settings.max_deliveries,
                    ": the run failed" if ended else "",
                    extra={"flow": flow.name, "run_id": str(m.rid), "vertex": m.addr},
                )
                if ended:
                    w.metrics.dead_lettered(m)
        if other:
            w.versions.parked(stream, other)
        if limited:  # global concurrency and rate limits: start now, or wait parked
            for m in await w.limits.admit(limited):
                w._launch(m, now)

    async def _claim(
        self, stream: str, args: list[Any], msgs: list[Any], *, reclaimed: bool
    ) -> Any:
        """The claim script's answer for ``msgs``, or None when Redis would not run it.

        Redis full: the claim is refused whole and retried until memory returns,
        the messages' leases renewed meanwhile (the lease script runs at maxmemory),
        so they are neither redelivered nor counted towards max_deliveries. Redis
        away: retried for a while, then left pending for the reclaim. A reclaimed
        batch is never held (the housekeeping that reclaims it must go on)."""
        ids = [m.id if isinstance(m, Msg) else m for m in msgs]
        started = time.monotonic()
        w = self.w
        give_up = w.settings.visibility_timeout / 2
        while True:
            try:
                res = await SCRIPTS.call(w.fast, "claim", stream, *args)
            except TRANSIENT as e:
                pause = self.claiming.failed(e)
                if (
                    reclaimed
                    or w._stopping.is_set()
                    or (not is_oom(e) and time.monotonic() - started + pause > give_up)
                ):
                    # not acked: pending, reclaimed after the visibility timeout
                    log.info("%d messages on %s left for redelivery (%s)", len(msgs), stream, e)
                    return None
                await asyncio.sleep(pause)
                if is_oom(e):
                    with contextlib.suppress(*TRANSIENT):
                        await SCRIPTS.call(w.fast, "lease", stream, w.consumer, *ids)
                continue
            self.claiming.ok()
            return res
