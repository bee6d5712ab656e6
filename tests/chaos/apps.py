"""Flows run by the worker subprocesses of the chaos tests and ``benchmarks/chaos.py``.

Loaded as ``tests/chaos/apps.py:app`` by ``python -m aioflow worker``. Every node
records each execution in Redis itself, so executions can be counted across
processes (and across worker deaths):

- ``chaos:x:<run id>``: hash, vertex address -> executions started for that run;
- ``chaos:total``: hash, vertex address -> executions started, all runs together.

The counters live on ``CHAOS_REDIS_URL`` (defaults to ``AIOFLOW_REDIS_URL``), which
a test may point straight at Redis while the worker talks to it through a proxy.
Environment knobs, read at each call: ``CHAOS_SLEEP`` (seconds every diamond node
awaits, default 0.2) and ``CHAOS_STALL`` (seconds ``stall``'s middle node awaits,
default 1.5).
"""

from __future__ import annotations

import asyncio
import os
import time

from redis.asyncio import Redis

import aioflow
from aioflow.app import connect
from aioflow.store.outage import REDIS_ERRORS
from aioflow.store.topology import Backend, RedisClient

EXEC_PREFIX = "chaos:x:"
TOTAL = "chaos:total"

_counter: RedisClient | None = None
_opening: asyncio.Lock | None = None


async def _client() -> RedisClient:
    """The counters' client: redis-py, a RedisCluster when the URL is a cluster node's."""
    global _counter, _opening
    if _counter is None:
        _opening = _opening or asyncio.Lock()
        async with _opening:
            if _counter is None:
                url = os.environ.get("CHAOS_REDIS_URL") or os.environ["AIOFLOW_REDIS_URL"]
                backend = Backend(connect(url, max_connections=16))
                await backend.start()
                await backend.fast.aclose()  # only its redis-py client is used
                _counter = backend.redis
    return _counter


async def record(ctx: aioflow.Context) -> None:
    """Count one execution of ``ctx.vertex`` in ``ctx.run_id``; retries while Redis is away."""
    deadline = time.monotonic() + 60.0
    backoff = 0.02
    while True:
        try:
            r = await _client()
            if isinstance(r, Redis):
                async with r.pipeline(transaction=True) as pipe:
                    pipe.hincrby(EXEC_PREFIX + ctx.run_id, ctx.vertex, 1)
                    pipe.hincrby(TOTAL, ctx.vertex, 1)
                    await pipe.execute()
            else:  # two slots on a cluster: one call per key
                await r.hincrby(EXEC_PREFIX + ctx.run_id, ctx.vertex, 1)
                await r.hincrby(TOTAL, ctx.vertex, 1)
            return
        # RuntimeError: redis-py's cluster, see worker; AttributeError/TypeError: a write
        # on a connection the dead master closed (redis-py issue #4287)
        except (*REDIS_ERRORS, RuntimeError, AttributeError, TypeError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.5)


async def _work(ctx: aioflow.Context, env: str = "CHAOS_SLEEP", default: float = 0.2) -> None:
    await record(ctx)
    await asyncio.sleep(float(os.environ.get(env, default)))


# -- diamond: a -> (b, c) -> d ------------------------------------------------------------

diamond = aioflow.Flow("diamond")


@diamond.node
async def a(x: int, ctx: aioflow.Context) -> int:
    await _work(ctx)
    return x + 1


@diamond.node(after=a)
async def b(x: int, ctx: aioflow.Context) -> int:
    await _work(ctx)
    return x * 2


@diamond.node(after=a)
async def c(x: int, ctx: aioflow.Context) -> int:
    await _work(ctx)
    return x * 3


@diamond.node(after=[b, c])
async def d(parts: dict[str, int], ctx: aioflow.Context) -> int:
    await _work(ctx)
    return parts["b"] + parts["c"]


DIAMOND_VERTICES = ("a", "b", "c", "d")


def diamond_result(x: int) -> int:
    return 2 * (x + 1) + 3 * (x + 1)


# -- stall: first -> slow -> child --------------------------------------------------------

stall = aioflow.Flow("stall")


@stall.node
async def first(x: int, ctx: aioflow.Context) -> int:
    await record(ctx)
    return x + 1


@stall.node(after=first)
async def slow(x: int, ctx: aioflow.Context) -> int:
    await _work(ctx, "CHAOS_STALL", 1.5)
    return x * 2


@stall.node(after=slow)
async def child(x: int, ctx: aioflow.Context) -> int:
    await record(ctx)
    return x + 3


def stall_result(x: int) -> int:
    return (x + 1) * 2 + 3


# -- crashy: one node that kills its worker on a negative input ---------------------------

crashy = aioflow.Flow("crashy")


@crashy.node
async def maybe_crash(x: int, ctx: aioflow.Context) -> int:
    await record(ctx)
    if x < 0:
        await asyncio.sleep(0.3)  # let the other messages of the batch complete first
        os._exit(1)
    return x * 2


# -- waiter: a wait on the event chaos.go keyed by the input, then one node -------------

waiter = aioflow.Flow("waiter")
waiter.wait("w", event="chaos.go", key=str, timeout=600)


@waiter.node(after="w")
async def resumed(event: dict[str, int], ctx: aioflow.Context) -> int:
    await record(ctx)
    return event["v"] + 1


app = aioflow.App(flows=[diamond, stall, crashy, waiter])
