"""Events: sending one to the runs that wait on its ``(name, key)`` and to the flows
it starts, and the waiters' side of it.

Everything of an event name lives under its own hash tag ``af:{ev:<name>}`` (one
Cluster slot; see :mod:`aioflow.store.keys`), runs under theirs: a send is one
atomic script on the event's slot that keeps the event and snapshots its waiters
and triggers (the *fan-out*), then one idempotent hop per waiting run
(``steering.resolve_wait``) and per triggered flow (a submit with a run id derived
from the event id), then one script that marks the fan-out done. A sender that dies
in between leaves the fan-out in ``af:{ev:<name>}:f``, where a worker's
housekeeping finds it and does the rest (:func:`redo_due`).

A wait registers (:func:`register_wait`) in one script that also looks at the
events kept for its key: an event sent after the run was created but before the
run reached its wait is found there, so no event is lost in that race.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from aioflow.core import codec
from aioflow.core.errors import AioflowError, LimitExceeded, RedisUnavailable
from aioflow.definitions.model import Dag, Flow
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.scripts import SCRIPTS

from . import steering

log = logging.getLogger("aioflow.events")

DEFAULT_TTL_MS = 86_400_000  # Settings.event_ttl's default
REDO_AFTER = 30.0  # seconds a fan-out is left to its sender before another process does it
CHUNK = 200  # waiters resolved at once


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


async def register_wait(
    fast: Any,
    event: str,
    key: str,
    ref: str,
    deadline_ms: int,
    since_ms: int,
    *,
    now_ms: int | None = None,
    ttl_ms: int = DEFAULT_TTL_MS,
) -> tuple[str, bytes] | None:
    """Record ``ref`` (:func:`aioflow.store.keys.waiter_ref`) as waiting on ``(event,
    key)`` until ``deadline_ms`` (epoch ms; 0: none, the record then lasts
    ``ttl_ms``), unless an event of ``(event, key)`` sent at or after ``since_ms``
    (epoch ms; negative: look at none) is kept: then answer it as ``(event id,
    encoded data)`` and record nothing. One script on the event's slot, so an event
    is either seen here or its send sees this waiter. ``now_ms`` (default: the time
    now) is of the clock the deadline is of."""
    keys.check_event_name(event)
    keys.check_event_key(key)
    now = _ms(time.time()) if now_ms is None else now_ms
    since = "" if since_ms < 0 else str(since_ms)
    res = await SCRIPTS.call(
        fast,
        "ev_wait",
        keys.event_stream(event, key),
        "w",
        key,
        ref,
        int(deadline_ms),
        since,
        now,
        ttl_ms,
    )
    if isinstance(res, list):
        eid, data = res
        return (eid.decode() if isinstance(eid, bytes) else str(eid)), bytes(data)
    return None


async def forget_wait(fast: Any, event: str, key: str, ref: str) -> None:
    """Forget the waiter ``ref`` of ``(event, key)`` (resolved, timed out or ended)."""
    keys.check_event_name(event)
    keys.check_event_key(key)
    await SCRIPTS.call(fast, "ev_wait", keys.event_stream(event, key), "f", key, ref)


# -- sending --------------------------------------------------------------------------


class Sender(Protocol):
    """What sending an event needs of an :class:`~aioflow.engine.engine.Engine`."""

    fast: Any
    clock: Callable[[], float]
    max_value: int | None
    event_ttl: float

    async def submit(
        self,
        flow: str,
        data: Any = None,
        *,
        run_id: str | None = None,
        options: dict[str, list[str]] | None = None,
    ) -> tuple[RunId, bool]: ...


@dataclass(frozen=True)
class Fanout:
    """Where one event goes: the waiters of its ``(name, key)`` and the flows it
    starts, as ``ev_send.lua`` found them when it kept the event."""

    name: str
    key: str
    event_id: str
    data: bytes  # encoded
    waiters: tuple[str, ...]
    flows: tuple[str, ...]

    @classmethod
    def from_doc(cls, name: str, event_id: str, doc: dict[str, Any], data: bytes) -> Fanout:
        w = doc.get("w") or []  # Lua's JSON writes an empty list as {}
        return cls(
            name,
            str(doc["k"]),
            event_id,
            data,
            tuple(w[::2]) if isinstance(w, list) else (),
            tuple(doc.get("f") or ()) if isinstance(doc.get("f"), list) else (),
        )


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def send_event(
    sender: Sender, name: str, data: Any, *, key: str | None = None, event_id: str | None = None
) -> dict[str, Any]:
    """See :meth:`aioflow.engine.engine.Engine.send_event`."""
    keys.check_event_name(name)
    key = keys.check_event_key("" if key is None else key)
    eid = keys.new_key() if event_id is None else keys.check_event_id(event_id)
    value = codec.encode(data, "event data")
    if sender.max_value is not None and len(value) > sender.max_value:
        raise LimitExceeded(
            f"the data of event {name!r} is {len(value)} bytes, larger than "
            f"max_value={sender.max_value}: the event was not sent"
        )
    res = await SCRIPTS.call(
        sender.fast,
        "ev_send",
        keys.event_stream(name, key),
        "s",
        key,
        eid,
        value,
        _ms(sender.clock()),
        _ms(sender.event_ttl),
        _ms(REDO_AFTER),
    )
    doc = codec.loads(res[1])
    if _text(res[0]) == "dup":
        if "a" in doc:  # sent before, fan-out done: the first send's answer
            return dict(codec.loads(doc["a"]))
        value = bytes(res[2])  # sent before, fan-out under way: do it too (idempotent)
    return await deliver(sender, Fanout.from_doc(name, eid, doc, value))


async def deliver(sender: Sender, fan: Fanout) -> dict[str, Any]:
    """Resolve the fan-out's waiters, start its flows' runs, mark it done; answers
    ``{"resolved": n, "started": [run ids]}``. Every step is idempotent, so a
    second sender of the event, or a worker redoing a dead sender's fan-out, may
    run it again."""
    now = sender.clock()
    resolved = 0
    for i in range(0, len(fan.waiters), CHUNK):
        done = await asyncio.gather(
            *(_resolve(sender.fast, ref, fan.data, now) for ref in fan.waiters[i : i + CHUNK])
        )
        resolved += sum(done)
    started = []
    if fan.flows:
        data = codec.decode(fan.data)
        opts = {"event": [fan.name], "event_key": [fan.key], "event_id": [fan.event_id]}
        for flow in fan.flows:
            try:
                rid, _ = await sender.submit(
                    flow, data, run_id=trigger_run_key(fan.event_id), options=opts
                )
            except RedisUnavailable:
                raise  # the fan-out stays: redone later
            except AioflowError as e:  # refused for good (its registration expired...)
                log.warning("event %r: not starting flow %r: %s", fan.name, flow, e)
                continue
            started.append(str(rid))
    answer = {"resolved": resolved, "started": started}
    await SCRIPTS.call(
        sender.fast, "ev_send", keys.event_fanouts(fan.name), "d", fan.event_id, codec.dumps(answer)
    )
    return answer


def trigger_run_key(event_id: str) -> str:
    """The id a flow's run started by event ``event_id`` is submitted with: the same
    for every sender, so one run per (event id, flow)."""
    return f"ev-{event_id}"


async def _resolve(fast: Any, ref: str, data: bytes, now: float) -> bool:
    stream, uid, addr = keys.parse_waiter_ref(ref)
    return bool(await steering.resolve_wait(fast, stream, uid, addr, data, now))


async def redo_due(sender: Sender, names: Iterable[str], *, limit: int = 100) -> int:
    """Finish the fan-outs of events ``names`` whose senders left them unfinished for
    :data:`REDO_AFTER` seconds (they died); answers how many. Any process may call
    it: a fan-out taken is not due again for ``REDO_AFTER``."""
    n = 0
    for name in names:
        res = await SCRIPTS.call(
            sender.fast,
            "ev_send",
            keys.event_fanouts(name),
            "r",
            _ms(sender.clock()),
            _ms(REDO_AFTER),
            limit,
        )
        for raw_id, raw_doc, data in res or ():
            eid, doc = _text(raw_id), codec.loads(raw_doc)
            if "a" in doc:
                continue
            log.info("event %r id %r: finishing the fan-out its sender left", name, eid)
            await deliver(sender, Fanout.from_doc(name, eid, doc, bytes(data)))
            n += 1
    return n


def listened(flows: Iterable[Flow]) -> list[str]:
    """The event names ``flows`` wait on (their ``wait`` vertices, nested dags
    included) or are started by (``on_event``), sorted."""
    names: set[str] = set()

    def walk(dag: Dag) -> None:
        for v in dag.vertices.values():
            event = getattr(v.spec, "event", None)
            if v.kind == "wait" and event:
                names.add(event)
            for inner in (v.dag, *v.branches.values()):
                if inner is not None:
                    walk(inner)

    for f in flows:
        names.update(f.on_event)
        walk(f)
    return sorted(names)
