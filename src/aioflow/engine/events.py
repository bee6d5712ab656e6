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

import time
from typing import Any

from aioflow.store import keys
from aioflow.store.scripts import SCRIPTS

DEFAULT_TTL_MS = 86_400_000  # Settings.event_ttl's default


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
