"""A real deployment: ``aioflow serve`` and two ``aioflow worker`` processes on one Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

import aioflow
from aioflow.store import keys
from aioflow.store.redis_server import free_port
from tests.helpers import wait_until
from tests.procs import Procs, clean_env

APP = "tests.apps.diamond_app:app"
RUNS = 1000
PARALLEL = 50


async def _healthy(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with session.get(f"{base}/healthz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def _readers(redis: Redis, n: int) -> bool:
    """At least ``n`` connections are blocked in XREADGROUP: ``n`` workers wait for work.

    (A consumer shows in XINFO CONSUMERS only once it was delivered something.)
    """
    clients = await redis.client_list()
    return sum(1 for c in clients if c.get("cmd") == "xreadgroup") >= n


@pytest.mark.slow
async def test_gateway_and_two_workers(redis_url: str, redis: Redis, procs: Procs) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env()
    serve = ["serve", APP, "--redis-url", redis_url, "--port", str(port)]
    gw = procs.aioflow("serve", *serve, env=env)
    w1 = procs.aioflow("worker1", "worker", APP, "--redis-url", redis_url, env=env)
    w2 = procs.aioflow("worker2", "worker", APP, "--redis-url", redis_url, env=env)
    stream = keys.stream("diamond", 0)

    async with aiohttp.ClientSession() as session:
        await wait_until(lambda: _healthy(session, base), timeout=30, what="gateway /healthz")
        # both workers are reading the stream before the runs arrive
        await wait_until(lambda: _readers(redis, 2), timeout=30, what="2 workers")
        procs.check_alive()

        sem = asyncio.Semaphore(PARALLEL)

        async def post(n: int) -> str:
            async with sem, session.post(f"{base}/flow/diamond", json={"n": n}) as resp:
                assert resp.status == 202, await resp.text()
                doc: dict[str, Any] = await resp.json()
                assert resp.headers["X-Run-Id"] == doc["run_id"]
                return str(doc["run_id"])

        run_ids = await asyncio.gather(*(post(n) for n in range(RUNS)))
        assert len(set(run_ids)) == RUNS

        # a few with ?wait, answered by the gateway itself
        for n in (7, 8):
            async with session.post(f"{base}/flow/diamond?wait=30", json={"n": n}) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["sum"] == n * 5

        pids: set[int] = set()
        async with aioflow.Client(redis_url) as client:

            async def check(n: int, run_id: str) -> None:
                async with sem:
                    out = await client.result(run_id, timeout=60)
                assert out["sum"] == n * 5, (run_id, out)
                assert len(out["pids"]) == 5
                pids.update(out["pids"])

            await asyncio.gather(*(check(n, rid) for n, rid in enumerate(run_ids)))

            # the state over HTTP agrees for a sample
            for n in (0, RUNS // 2, RUNS - 1):
                async with session.get(f"{base}/flow/diamond/run/{run_ids[n]}") as resp:
                    assert resp.status == 200
                    doc = await resp.json()
                assert doc["status"] == "completed"
                assert doc["result"]["sum"] == n * 5
                assert set(doc["vertices"]) == {"top", "left", "right", "join"}

        assert pids <= {w1.pid, w2.pid}, "a node ran outside the worker processes"
        assert pids == {w1.pid, w2.pid}, "both workers should have done work"
        assert gw.pid not in pids
        procs.check_alive()

    procs.terminate(timeout=30)  # SIGTERM to all: each drains and exits 0
    # nothing left pending after the drain
    g = [x for x in await redis.xinfo_groups(stream) if x["name"] == keys.GROUP.encode()]
    assert g and g[0]["pending"] == 0
