"""Global concurrency and rate limits across real worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

import aioflow
from aioflow.store.redis_server import RedisServer
from tests.helpers import ROOT, wait_until

APP = "tests.apps.limits_app:app"


class Workers:
    """``aioflow worker`` processes, their output in files."""

    def __init__(self, log_dir: Path, url: str) -> None:
        self.log_dir, self.url = log_dir, url
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIOFLOW_")}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        log = self.log_dir / f"worker{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "aioflow", "worker", APP, "--redis-url", self.url, *args],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.log_dir.glob("worker*.log")))

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """Three workers of concurrency 50 on a Redis of their own, shared by the tests
    that kill nothing (each uses its own flow and counters)."""
    server = RedisServer(dir=tmp_path_factory.mktemp("limits-redis"), appendonly=False)
    server.start()
    w = Workers(tmp_path_factory.mktemp("limits-logs"), server.url)
    try:
        for _ in range(3):  # short leases: the last test kills workers holding slots
            w.start("--concurrency", "50", "--visibility-timeout", "2")
        yield w
    finally:
        w.kill_all()
        server.stop()


@pytest.fixture
async def shared(deployment: Workers) -> AsyncIterator[tuple[str, Redis]]:
    redis = Redis.from_url(deployment.url)
    try:
        await wait_until(lambda: _readers(redis, 3), timeout=60, what="3 workers reading")
        yield deployment.url, redis
    finally:
        await redis.aclose()


async def _readers(redis: Redis, n: int) -> bool:
    clients = await redis.client_list()
    return sum(1 for c in clients if c.get("cmd") == "xreadgroup") >= n


async def _int(redis: Redis, key: str) -> int:
    return int(await redis.get(key) or 0)


@pytest.mark.slow
async def test_concurrency_cap_across_three_workers(
    shared: tuple[str, Redis], deployment: Workers
) -> None:
    redis_url, redis = shared
    async with aioflow.Client(redis_url) as client:
        ids = [
            await client.submit("capped", {"url": redis_url, "n": n, "sleep": 0.05})
            for n in range(30)
        ]
        outs = await asyncio.gather(*(client.result(i, timeout=30) for i in ids))
    assert sorted(o["n"] for o in outs) == list(range(30)), deployment.output()
    assert await _int(redis, "t:capped:max") == 2
    assert len({o["pid"] for o in outs}) > 1  # shared by the workers, not one doing it all
    # no slot left behind (released just after the completion), no waiter left behind
    await wait_until(lambda: _slots(redis, 0), timeout=2, what="slots released")
    assert await redis.zcard("af:lim:{capped:work}:w") == 0


@pytest.mark.slow
async def test_concurrency_key_one_per_key_keys_in_parallel(
    shared: tuple[str, Redis],
) -> None:
    redis_url, redis = shared
    async with aioflow.Client(redis_url) as client:
        # tenant a floods first; b and c come behind it and still run alongside
        data = [{"tenant": "a"}] * 12 + [{"tenant": "b"}] * 4 + [{"tenant": "c"}] * 4
        ids = [await client.submit("keyed", {"url": redis_url, "sleep": 0.05, **d}) for d in data]
        b_last = client.result(ids[15], timeout=30)
        await asyncio.gather(*(client.result(i, timeout=30) for i in ids))
        await b_last
        for t in "abc":
            assert await _int(redis, f"t:keyed:{t}:max") == 1, t
        assert await _int(redis, "t:keyed:allmax") >= 2  # different keys ran at once
        # a's flood did not hold b back until a finished: b was done before a's last start
        a_starts = [float(s.split()[0]) for s in await redis.lrange("t:keyed:a:starts", 0, -1)]
        b_starts = [float(s.split()[0]) for s in await redis.lrange("t:keyed:b:starts", 0, -1)]
        assert max(b_starts) < max(a_starts)


async def _slots(redis: Redis, n: int) -> bool:
    return int(await redis.zcard("af:lim:{capped:work}:h")) == n


async def _is(redis: Redis, key: str, n: int) -> bool:
    return await _int(redis, key) == n


async def _waiting(redis: Redis, n: int) -> bool:
    return int(await redis.zcard("af:lim:{capped:work}:w")) == n


@pytest.mark.slow
async def test_rate_paces_starts_across_workers(
    shared: tuple[str, Redis], deployment: Workers
) -> None:
    redis_url, redis = shared
    n = 15
    async with aioflow.Client(redis_url) as client:
        ids = await asyncio.gather(
            *(client.submit("paced", {"url": redis_url, "n": i}) for i in range(n))
        )
        await asyncio.gather(*(client.result(i, timeout=30) for i in ids))
    raw = await redis.lrange("t:paced:starts", 0, -1)
    starts = sorted(float(s.split()[0]) for s in raw)
    pids = {s.split()[1] for s in raw}
    assert len(starts) == n and len(pids) > 1, deployment.output()
    # a bucket of 5 tokens refilled at 5/s: 5 at once, then one every 0.2 s
    t0 = starts[0]
    for k, t in enumerate(starts):
        earliest = t0 + max(0, k - 4) * 0.2
        assert t >= earliest - 0.05, (k, t - t0)
    # and not much slower than the bucket allows (the mover polls every 0.25 s at worst)
    assert starts[-1] - t0 <= (n - 5) * 0.2 + 1.0, starts[-1] - t0


@pytest.mark.slow
async def test_sigkilled_worker_slots_come_back(
    shared: tuple[str, Redis], deployment: Workers
) -> None:
    """(Last of the module: it kills some of the shared workers.)"""
    redis_url, redis = shared
    await redis.delete("t:capped:cur", "t:capped:max", "t:capped:starts")
    async with aioflow.Client(redis_url) as client:
        ids = [
            await client.submit("capped", {"url": redis_url, "n": n, "hang": True})
            for n in range(2)
        ]
        # both slots are held by nodes that hang until their worker dies
        await wait_until(lambda: _is(redis, "t:capped:cur", 2), timeout=10, what="2 running")
        assert await redis.zcard("af:lim:{capped:work}:h") == 2
        for n in range(2, 8):
            ids.append(await client.submit("capped", {"url": redis_url, "n": n, "sleep": 0.05}))
        await wait_until(
            lambda: _waiting(redis, 6), timeout=10, what="the others waiting for a slot"
        )
        holders = {int(s.split()[1]) for s in await redis.lrange("t:capped:starts", 0, -1)}
        victims = [p for p in deployment.procs if p.pid in holders]
        assert victims and len(victims) < 3
        for p in victims:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)
        await redis.mset({"t:capped:cur": 0, "t:capped:max": 0})  # their nodes died too
        outs = await asyncio.gather(*(client.result(i, timeout=30) for i in ids))
    assert sorted(o["n"] for o in outs) == list(range(8)), deployment.output()
    assert not {o["pid"] for o in outs} & holders
    assert await _int(redis, "t:capped:max") == 2, deployment.output()
    await wait_until(lambda: _slots(redis, 0), timeout=2, what="slots released")
