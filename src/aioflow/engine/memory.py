"""Whether the Redis masters refuse writes for lack of memory."""

from __future__ import annotations

from typing import Any

from aioflow.store.topology import Conn


def _info_fields(reply: Any) -> dict[str, Any]:
    """An ``INFO`` reply as a dict: the lean connection's text, or what redis-py made of it."""
    if isinstance(reply, dict):
        return reply
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k: v.strip() for k, v in pairs}


async def memory_full(fast: Conn) -> list[str]:
    """A line for each master of the started ``fast`` that is over its ``maxmemory``
    (see :meth:`aioflow.engine.engine.Engine.memory_full`)."""
    full: list[str] = []
    for addr in fast.masters:
        info = _info_fields(await fast.execute_on(addr, "INFO", "memory"))
        limit = int(info.get("maxmemory", 0))
        used = int(info.get("used_memory", 0)) - int(info.get("mem_not_counted_for_evict", 0))
        if limit and used > limit:
            where = f"{addr[0]}:{addr[1]}" if addr[0] else "Redis"
            full.append(f"{where} uses {used} bytes, over its maxmemory of {limit}")
    return full
