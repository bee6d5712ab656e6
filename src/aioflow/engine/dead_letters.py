"""Dead letters: listing the newest of every flow, and replaying one (its run
reruns from its failed vertices and the entry leaves the dead-letter stream)."""

from __future__ import annotations

import re
from typing import Any

from aioflow.core.errors import InvalidRunId, InvalidTransition, RunNotFound
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.topology import Backend

from .catalog import Catalog
from .rerun import rerun

DLQ_ID_RE = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


async def newest(backend: Backend, catalog: Catalog, limit: int) -> list[dict[str, Any]]:
    """See :meth:`aioflow.engine.engine.Engine.dead_letters`."""
    out: list[dict[str, Any]] = []
    for info in await catalog.flows():
        for p in range(info.partitions):
            rows: Any = await backend.redis.xrevrange(f"{keys.tag(info.name, p)}:dlq", count=limit)
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


async def replay(backend: Backend, catalog: Catalog, dead_letter_id: str) -> str:
    """See :meth:`aioflow.engine.engine.Engine.replay`."""
    try:
        flow, part, eid = dead_letter_id.split(".", 2)
        keys.check_flow_name(flow)
        p = int(part)
        if not DLQ_ID_RE.fullmatch(eid) or any(int(x) >= 2**64 for x in eid.split("-")):
            raise ValueError(eid)
    except (ValueError, InvalidRunId):
        raise InvalidRunId(f"invalid dead letter id {dead_letter_id!r}") from None
    await backend.start()
    rows: Any = await backend.redis.xrange(f"{keys.tag(flow, p)}:dlq", eid, eid)
    if not rows:
        raise RunNotFound(f"no dead letter {dead_letter_id!r}")
    f = rows[0][1]
    if f.get(b"k") == b"?" or not f.get(b"r"):
        raise InvalidTransition(
            f"dead letter {dead_letter_id!r} is an undecodable message: it cannot be replayed"
        )
    rid = RunId(flow, p, f[b"r"].decode())
    await rerun(backend.redis, rid, await catalog.run_plan(rid), on_dead_letter=eid)
    return str(rid)
