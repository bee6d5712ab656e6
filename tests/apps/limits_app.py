"""Flows with global limits whose nodes count themselves in Redis.

Loaded by tests/test_concurrency_limits.py as ``tests.apps.limits_app:app``. Each input
carries the Redis URL to count in, and how long the node takes.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from redis.asyncio import Redis

import aioflow

_clients: dict[str, Redis] = {}

# INCR the running count, keep its maximum
_ENTER = """
local c = redis.call('INCR', KEYS[1])
if c > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], c) end
return c
"""


def _redis(url: str) -> Redis:
    if url not in _clients:
        _clients[url] = Redis.from_url(url)
    return _clients[url]


async def counted(data: dict[str, Any], name: str) -> dict[str, Any]:
    r = _redis(data["url"])
    await r.rpush(f"t:{name}:starts", f"{time.time():.6f} {os.getpid()}")
    await r.eval(_ENTER, 2, f"t:{name}:cur", f"t:{name}:max")
    await r.incr("t:all:cur")
    try:
        await asyncio.sleep(data.get("sleep", 0.0))
    finally:
        await r.decr(f"t:{name}:cur")
        await r.decr("t:all:cur")
    return {"n": data.get("n"), "pid": os.getpid()}


capped = aioflow.Flow("capped")


@capped.node(concurrency=2)
async def work(data: dict[str, Any], ctx: aioflow.Context) -> dict[str, Any]:
    if data.get("hang") and ctx.attempt == 1:  # until its worker is killed
        data = {**data, "sleep": 60}
    return await counted(data, "capped")


keyed = aioflow.Flow("keyed")


async def tenant(data: dict[str, Any]) -> str:
    return str(data["tenant"])


@keyed.node(concurrency=1, concurrency_key=tenant)
async def per_tenant(data: dict[str, Any]) -> dict[str, Any]:
    await _redis(data["url"]).eval(_ENTER, 2, "t:keyed:all", "t:keyed:allmax")
    try:
        return await counted(data, f"keyed:{data['tenant']}")
    finally:
        await _redis(data["url"]).decr("t:keyed:all")


paced = aioflow.Flow("paced")


@paced.node(rate="5/s")
async def tick(data: dict[str, Any]) -> dict[str, Any]:
    return await counted(data, "paced")


app = aioflow.App(flows=[capped, keyed, paced])
