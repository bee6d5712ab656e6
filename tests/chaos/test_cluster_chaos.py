"""Chaos on a real Redis Cluster: a worker SIGKILLed with 100+ vertices in flight, and a
master SIGKILLed under load (its replica is promoted)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

import aioflow
from aioflow.core import codec
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.redis_server import free_port
from tests.chaos import apps
from tests.chaos.harness import ROOT, Workers
from tests.helpers import ClusterFactory, wait_until

pytestmark = pytest.mark.chaos


async def _streams(r: RedisCluster, flow: str) -> list[str]:
    raw: Any = await r.hget(keys.FLOWS, flow)
    doc: Any = codec.loads(raw)
    return [keys.stream(flow, p) for p in range(int(doc["partitions"]))]


async def _held(r: RedisCluster, streams: list[str], pid: int) -> int:
    """Entries delivered to worker ``pid`` (its consumer name embeds the pid), not acked."""
    total = 0
    for s in streams:
        summary: Any = await r.xpending(s, keys.GROUP)
        for c in summary["consumers"] or ():
            name = c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
            if f"-{pid}-" in name:
                total += int(c["pending"])
    return total


async def _pending(r: RedisCluster, streams: list[str]) -> int:
    return sum([int((await r.xpending(s, keys.GROUP))["pending"]) for s in streams])


async def _added(r: RedisCluster, streams: list[str]) -> int:
    return sum([int((await r.xinfo_stream(s))["entries-added"]) for s in streams])


async def test_sigkill_worker_holding_100_in_flight_on_a_cluster(
    cluster_url: str, workers: Workers
) -> None:
    n = 200
    w1 = workers.start(cluster_url, concurrency=150, env={"CHAOS_SLEEP": "0.3"})
    await w1.ready(timeout=40)
    r = RedisCluster.from_url(cluster_url)
    try:
        streams = await _streams(r, "diamond")
        owners = {n.name for n in map(r.get_node_from_key, streams) if n is not None}
        assert len(owners) == 3  # partitions="auto" reaches every master
        async with aioflow.Client(cluster_url) as client:
            ids = list(await asyncio.gather(*(client.submit("diamond", i) for i in range(n))))
            inputs = dict(zip(ids, range(n), strict=True))
            await wait_until(
                lambda: _at_least(_held(r, streams, w1.pid), 100), timeout=30, what="100 held"
            )
            w1.signal(signal.SIGKILL)
            assert w1.proc.wait() == -signal.SIGKILL

            w2 = workers.start(cluster_url, concurrency=200, env={"CHAOS_SLEEP": "0.3"})
            results = await asyncio.gather(*(client.result(i, timeout=40) for i in ids))
            assert results == [apps.diamond_result(inputs[i]) for i in ids]
            assert w2.running
        await wait_until(lambda: _zero(_pending(r, streams)), timeout=15, what="empty PELs")
        # each completion applied once: the join counted exactly two parents, and the
        # streams got exactly one entry per vertex of every run
        for rid in ids:
            joined = await r.hget(RunId.parse(rid).run, "n:d")
            assert joined is not None and int(joined) == 2, rid
        assert await _added(r, streams) == 4 * n
        # every vertex ran at least once; more than once only where w1 held it
        for rid in ids:
            counts: Any = await r.hgetall(apps.EXEC_PREFIX + rid)
            assert {k.decode() for k in counts} == set(apps.DIAMOND_VERTICES)
    finally:
        await r.aclose()


async def _at_least(value: Any, n: int) -> bool:
    return int(await value) >= n


async def _zero(value: Any) -> bool:
    return int(await value) == 0


@pytest.mark.slow
async def test_master_failover_under_load(
    cluster_factory: ClusterFactory, workers: Workers
) -> None:
    """SIGKILL a master while runs flow; its replica is promoted. No worker or gateway
    exits; every run submitted after the promotion completes; a run in flight across it
    completes, or (its submit not yet replicated when the master died) is gone: the
    README's guarantees say so."""
    cluster = cluster_factory(masters=3, replicas=1)
    url = cluster.url
    env = {"CHAOS_SLEEP": "0.02"}
    w1 = workers.start(url, concurrency=100, env=env)
    w2 = workers.start(cluster.urls[1], concurrency=100, env=env)
    await w1.ready(timeout=40)
    await w2.ready(timeout=40)
    port = free_port()
    gateway = subprocess.Popen(  # noqa: ASYNC220 - started once, not waited on
        [sys.executable, "-m", "aioflow", "serve", "tests/chaos/apps.py:app"]
        + ["--redis-url", cluster.urls[2], "--port", str(port)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with aioflow.Client(url) as client:
            before = list(await asyncio.gather(*(client.submit("diamond", i) for i in range(100))))
            victim = next(m for m in cluster.masters() if m.url != url)
            stop = asyncio.Event()
            during: list[tuple[str, int]] = []
            refused = 0

            async def keep_submitting() -> None:
                nonlocal refused
                i = 1000
                while not stop.is_set():
                    try:
                        during.append((await client.submit("diamond", i), i))
                    except aioflow.RedisUnavailable:
                        refused += 1  # its master is away: the caller may retry
                        await asyncio.sleep(0.05)
                    i += 1

            load = asyncio.create_task(keep_submitting())
            await wait_until(lambda: len(during) >= 50, timeout=20, what="load going")
            cluster.kill(victim)
            promoted = await asyncio.to_thread(cluster.wait_failover, victim, 30)
            assert promoted.role == "master"
            stop.set()
            await load

            after = list(await asyncio.gather(*(client.submit("diamond", i) for i in range(50))))
            got = await asyncio.gather(*(client.result(i, timeout=60) for i in after))
            assert got == [apps.diamond_result(i) for i in range(50)]

            lost = 0
            for rid, x in [*zip(before, range(100), strict=True), *during]:
                try:
                    out = await client.result(rid, timeout=60)
                except aioflow.RunNotFound:
                    lost += 1  # acknowledged, then lost with the master's last writes
                    continue
                assert out == apps.diamond_result(x)
            # at most the writes of the last moments before the kill are lost
            assert lost <= len(during) // 2, (lost, len(during))
        assert w1.running and w2.running, workers.logs()
        assert gateway.poll() is None
    finally:
        gateway.kill()
        gateway.wait()
