"""``aioflow worker --health``: whether a worker process on this host does its job.

Each worker writes a heartbeat to ``af:workers`` from its housekeeping loop: when
it beat, when a read of its streams last came back (an empty blocking read counts:
the worker listens), how many nodes it runs, its concurrency and the window it is
judged by. :func:`judge` is the rule; :func:`probe` applies it to the heartbeats
of this host.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from aioflow.core import codec
from aioflow.core.settings import Settings
from aioflow.store import keys
from aioflow.store.connect import connect
from aioflow.store.outage import REDIS_ERRORS
from aioflow.store.topology import Backend, as_text

BLOCK = 1.0  # a worker's blocking read's BLOCK, in seconds
READ_GRACE = 3.0  # how late its reply may be before the connection counts as stalled


def window(settings: Settings) -> float:
    """How old a heartbeat or a read may be for a worker to count as healthy: three
    heartbeat intervals or two Redis timeouts (a slow housekeeping pass), whichever
    is longer, plus a blocking read and its grace."""
    beat_every = max(0.05, min(settings.visibility_timeout / 3, 5.0))
    return max(3 * beat_every, 2 * settings.redis_timeout) + BLOCK + READ_GRACE


def judge(doc: dict[str, Any], now: float, default_window: float) -> tuple[bool, str]:
    """Whether the worker of heartbeat ``doc`` is healthy at ``now`` (epoch seconds),
    and why not. Healthy: it beat within the window, and a read of its streams came
    back within the window or every slot is busy (a full worker reads nothing)."""
    win = float(doc.get("window") or default_window)
    beat_age = now - float(doc.get("beat", 0))
    if beat_age > win:
        return False, f"no heartbeat for {beat_age:.0f} s (window {win:g} s)"
    read_age = now - float(doc.get("last_read", 0))
    concurrency = int(doc.get("concurrency") or 0)
    if read_age > win and not (concurrency and int(doc.get("inflight", 0)) >= concurrency):
        return False, f"no read came back for {read_age:.0f} s (window {win:g} s)"
    return True, ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


async def probe(settings: Settings) -> dict[str, Any]:
    """The health report of the workers of this host, as ``--health`` prints it;
    ``report["healthy"]`` is the verdict.

    While Redis is full (used memory at ``maxmemory``) workers cannot write their
    heartbeats; a worker whose process is alive then counts as healthy, since
    restarting it would not help (``report["redis"]`` is ``"full"``)."""
    assert settings.redis_url is not None
    backend = Backend(connect(settings.redis_url, timeout=settings.redis_timeout))
    report: dict[str, Any] = {"redis": False, "workers": []}
    full = False
    try:
        await backend.start()
        raw: Any = await backend.redis.hgetall(keys.WORKERS)
        memory: Any = await backend.redis.info("memory")
        report["redis"] = True
        if isinstance(memory, dict):
            limit = int(memory.get("maxmemory", 0) or 0)
            full = bool(limit) and int(memory.get("used_memory", 0)) >= limit
            if full:
                report["redis"] = "full"
    except REDIS_ERRORS as e:
        report["error"] = str(e)
        raw = {}
    finally:
        await backend.aclose()
        await backend.given.aclose()
    now = time.time()
    default = window(settings)
    host = socket.gethostname()
    healthy = False
    for name, value in raw.items():
        doc = codec.loads(value)
        if doc.get("host") != host:
            continue
        ok, why = judge(doc, now, default)
        pid = int(doc.get("pid", 0))
        alive = pid > 0 and _alive(pid)
        if not alive:
            ok, why = False, f"process {pid} is gone"
        elif full and not ok:
            ok, why = True, f"Redis is full, so no heartbeat ({why})"
        entry = {"name": as_text(name), "reading": ok, **doc}
        if why:
            entry["why"] = why
        report["workers"].append(entry)
        healthy = healthy or ok
    report["healthy"] = healthy
    return report
