"""Running workers and clients in-process against a test Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aioflow
from aioflow.app import connect
from aioflow.store.topology import RedisClient


@dataclass
class Stack:
    """In-process workers and a client on one Redis (see :func:`running`)."""

    url: str
    redis: RedisClient  # a RedisCluster on a cluster, once a worker prepared
    client: aioflow.Client
    workers: list[aioflow.Worker] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop_worker(self, i: int) -> None:
        self.workers[i].stop()
        await self.tasks[i]


@contextlib.asynccontextmanager
async def running(
    flows: Sequence[aioflow.Flow],
    url: str,
    *,
    workers: int = 1,
    concurrency: int = 50,
    **settings: Any,
) -> AsyncIterator[Stack]:
    """Start ``workers`` in-process workers serving ``flows`` and a client; stop all after.

    The flows are registered before the block starts, so the client can submit at once.
    """
    redis = connect(url)
    s = aioflow.Settings(redis_url=url, concurrency=concurrency, **settings)
    stack = Stack(url, redis, aioflow.Client(url))
    try:
        for _ in range(workers):
            w = aioflow.Worker(flows, redis, settings=s)
            await w.prepare()
            stack.redis = w.redis
            stack.workers.append(w)
            stack.tasks.append(asyncio.create_task(w.run()))
        yield stack
    finally:
        for w in stack.workers:
            w.stop()
        for t in stack.tasks:
            with contextlib.suppress(Exception):
                await t
        await stack.client.close()
        await redis.aclose()
