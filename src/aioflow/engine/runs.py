"""Reading runs: one run's state, and a flow's runs newest first, page by page."""

from __future__ import annotations

import math
from typing import Any

from aioflow.core.errors import InvalidCursor, RunNotFound
from aioflow.definitions.status import RunState, Status, parse_state
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.topology import Backend


def _parse_cursor(cursor: str) -> tuple[float, int, str]:
    try:
        score, part, key = cursor.split(":")
        value = float(score)
        if not math.isfinite(value) or not keys.RUN_KEY_RE.fullmatch(key):
            raise ValueError(cursor)
        return value, int(part), key
    except ValueError:
        raise InvalidCursor(f"invalid cursor {cursor!r}: pass the next_cursor of a page") from None


async def state(backend: Backend, rid: RunId) -> RunState:
    await backend.start()
    h: Any = await backend.redis.hgetall(rid.run)
    if not h or b"status" not in h:
        raise RunNotFound(f"run {rid} not found (it never existed or it expired)")
    return parse_state(str(rid), rid.flow, h)


async def page(
    backend: Backend,
    flow: str,
    partitions: int,
    *,
    status: Status | str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[RunState], str | None]:
    """See :meth:`aioflow.engine.engine.Engine.runs`; ``partitions`` is ``flow``'s count."""
    want = Status(status) if status else None
    limit = max(1, min(limit, 500))
    after = _parse_cursor(cursor) if cursor else None
    out: list[RunState] = []
    last: tuple[float, int, str] | None = None
    while len(out) < limit:
        batch: list[tuple[float, int, str]] = []
        for p in range(partitions):
            idx = f"{keys.tag(flow, p)}:i"
            if after is None:
                top, extra = "+inf", 0
            else:
                top, extra = (
                    repr(after[0]),
                    int(await backend.redis.zcount(idx, after[0], after[0])),
                )
            rows: Any = await backend.redis.zrevrangebyscore(
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
        async with backend.redis.pipeline(transaction=False) as pipe:
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
