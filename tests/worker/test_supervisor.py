"""``aioflow worker --processes N``: a supervisor keeps N real worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

import aioflow
from aioflow import Status
from aioflow.core.errors import ConfigError
from aioflow.store import keys
from aioflow.worker.supervisor import Backoff, parse_processes, without_option
from tests.apps.slow_app import slow
from tests.engine_helpers import running
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.slow_app:app"
T = 20.0


def children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (from /proc)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def supervisor(redis_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOFLOW_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with open(tmp_path / "supervisor.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aioflow", "worker", APP, "--redis-url", redis_url]
            + ["--processes", "2", "--concurrency", "10", "--grace", "10"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        kids = children(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass


async def reading(redis: Redis, n: int) -> bool:
    """At least ``n`` worker processes sit in a blocking read."""
    return sum(1 for c in await redis.client_list() if c.get("cmd") == "xreadgroup") >= n


async def test_a_killed_child_is_replaced(
    supervisor: subprocess.Popen[bytes], redis: Redis, redis_url: str
) -> None:
    await wait_until(lambda: len(children(supervisor.pid)) == 2, timeout=T, what="2 children")
    await wait_until(lambda: redis.hexists(keys.FLOWS, "slow"), timeout=T, what="registered")
    first = children(supervisor.pid)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        now = children(supervisor.pid)
        return len(now) == 2 and victim not in now

    await wait_until(replaced, timeout=T, what="a replacement process")
    assert supervisor.poll() is None
    await wait_until(lambda: reading(redis, 2), timeout=T, what="both processes reading")
    async with aioflow.Client(redis_url) as client:
        ids = [await client.submit("slow", {"n": i}) for i in range(20)]
        results = [await client.result(r, timeout=T) for r in ids]
    assert [r["n"] for r in results] == list(range(20))
    assert {r["pid"] for r in results} <= children(supervisor.pid)
    supervisor.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(supervisor.wait, T) == 0


async def test_sigterm_drains_every_child_and_loses_no_run(
    supervisor: subprocess.Popen[bytes], redis: Redis, redis_url: str
) -> None:
    await wait_until(lambda: reading(redis, 2), timeout=T, what="both processes reading")
    kids = children(supervisor.pid)
    assert len(kids) == 2
    async with aioflow.Client(redis_url) as client:
        ids = await client.submit_many("slow", [{"n": i, "sleep": 0.3} for i in range(60)])

        async def in_flight() -> bool:
            pending: int = (await redis.xpending(keys.stream("slow", 0), keys.GROUP))["pending"]
            return pending >= 10

        await wait_until(in_flight, timeout=T, what="runs in flight")
        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(supervisor.wait, T) == 0
        assert not any(alive(k) for k in kids)
        states = [await client.state(r) for r in ids]
        # nothing failed; what did not finish (never read, or claimed and handed back
        # unstarted: still "running") waits in the stream for the next worker
        assert not [s for s in states if s.status.finished and s.status is not Status.COMPLETED]
        async with running([slow], redis_url):
            results = [await client.result(r, timeout=T) for r in ids]
    assert [r["n"] for r in results] == list(range(60))


def test_processes_argument() -> None:
    assert parse_processes("3") == 3
    assert parse_processes("auto") == (os.cpu_count() or 1)
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError):
            parse_processes(bad)
    argv = ["worker", "a:app", "--processes", "2", "--concurrency", "5", "--processes=3"]
    assert without_option(argv, "--processes") == ["worker", "a:app", "--concurrency", "5"]


def test_backoff_doubles_then_caps() -> None:
    b = Backoff(first=0.5, cap=4.0)
    assert [b.delay(n) for n in (1, 2, 3, 4, 5, 9)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
