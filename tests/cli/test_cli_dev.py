"""The ``make run`` smoke test: ``aioflow dev examples/hello.py:app`` with no Redis URL
starts its own redis-server (or Redis Cluster, ``--cluster N``), serves the example, and
cleans up on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

import aioflow
from aioflow.cli.command import _own_redis
from aioflow.redis_cluster import LocalCluster
from aioflow.store.redis_server import free_port
from tests.helpers import run_aioflow, sync_cluster, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _redis_pids(data_dir: Path) -> set[int]:
    """Live redis-server processes belonging to ``data_dir``: their working directory
    (RedisServer runs the server in its dir) or their command line points into it.

    redis-server rewrites its process title, so the command line alone is not enough.
    """
    root = str(data_dir.resolve())
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
            stat = (entry / "stat").read_text()
        except OSError:  # gone, or not ours to inspect
            continue
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie is not running
            continue
        if "redis" not in cmdline:
            continue
        if cwd == root or cwd.startswith(root + os.sep) or root in cmdline:
            found.add(int(entry.name))
    return found


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "dev-data"
    try:
        yield d
    finally:
        for pid in _redis_pids(d):  # only if the test failed to have them cleaned up
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _healthy(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with session.get(f"{base}/healthz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


def _start_dev(port: int, data_dir: Path, log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    """``aioflow dev examples/hello.py:app [EXTRA]`` with no AIOFLOW_* variables (so no
    Redis URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOFLOW_")}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aioflow",
                "dev",
                "examples/hello.py:app",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def test_dev_runs_hello_and_cleans_up(tmp_path: Path, data_dir: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "dev.log"
    proc = _start_dev(port, data_dir, log_path)

    def output() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                assert proc.poll() is None, f"aioflow dev exited {proc.returncode}:\n{output()}"
                return await _healthy(session, base)

            await wait_until(ready, timeout=30, what="aioflow dev /healthz")
            async with session.post(f"{base}/flow/hello?wait=5", json={"name": "x"}) as resp:
                assert resp.status == 200, await resp.text()
                assert await resp.json() == {"message": "HELLO, X!"}

        # its own redis-server runs, with its data under --data-dir
        pids = _redis_pids(data_dir)
        assert len(pids) == 1, f"expected one redis-server under {data_dir}, found {pids}"
        assert (data_dir / "redis").is_dir()

        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"aioflow dev did not exit on SIGINT:\n{output()}") from None
        assert code == 0, f"aioflow dev exited {code}:\n{output()}"
        await wait_until(
            lambda: not _redis_pids(data_dir), timeout=15, what="the redis-server to exit"
        )
        assert "Traceback" not in output(), output()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_own_redis_cluster_starts_and_writes_its_url(tmp_path: Path, data_dir: Path) -> None:
    """What ``aioflow dev --cluster 3`` starts before serving: a 3-master cluster with its
    data (AOF) under --data-dir/cluster, its URL in --data-dir/redis.url."""
    running = _own_redis(str(data_dir), cluster=3)
    own = running.server
    try:
        assert isinstance(own, LocalCluster)
        url = (data_dir / "redis.url").read_text().strip()
        assert url == own.url
        assert len(_redis_pids(data_dir)) == 3
        with sync_cluster(url) as client:
            assert client.cluster_info()["cluster_state"] == "ok"
            assert len(client.get_primaries()) == 3 and not client.get_replicas()
            assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert sorted(p.name for p in (data_dir / "cluster").iterdir() if p.is_dir()) == sorted(
            f"node-{s.port}" for s in own.nodes
        )
    finally:
        running.stop()
    assert not _redis_pids(data_dir)


async def test_dev_cluster_needs_no_url_and_replicas_need_cluster(data_dir: Path) -> None:
    dev = ("dev", "examples/hello.py:app", "--data-dir", str(data_dir))
    code, _, err = await run_aioflow(*dev, "--replicas", "1")
    assert code == 2 and "--replicas needs --cluster" in err, err
    code, _, err = await run_aioflow(*dev, "--cluster", "3", "--redis-url", "redis://127.0.0.1:1")
    assert code == 2 and "drop --url" in err, err


async def test_dev_cluster_runs_hello_and_cleans_up(tmp_path: Path, data_dir: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "dev.log"
    proc = _start_dev(port, data_dir, log_path, "--cluster", "3")

    def output() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                assert proc.poll() is None, f"aioflow dev exited {proc.returncode}:\n{output()}"
                return await _healthy(session, base)

            await wait_until(ready, timeout=30, what="aioflow dev --cluster 3 /healthz")
            async with session.post(f"{base}/flow/hello?wait=5", json={"name": "x"}) as resp:
                assert resp.status == 200, await resp.text()
                assert await resp.json() == {"message": "HELLO, X!"}
        assert len(_redis_pids(data_dir)) == 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, output()
        await wait_until(lambda: not _redis_pids(data_dir), timeout=15, what="the nodes to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _url_file(data_dir: Path) -> str:
    try:
        return (data_dir / "redis.url").read_text().strip()
    except FileNotFoundError:
        return ""


async def _serving(base: str, proc: subprocess.Popen[bytes], output: Callable[[], str]) -> None:
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            assert proc.poll() is None, f"aioflow dev exited {proc.returncode}:\n{output()}"
            return await _healthy(session, base)

        await wait_until(ready, timeout=30, what=f"aioflow dev on {base}")


def _stop(proc: subprocess.Popen[bytes], output: Callable[[], str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"aioflow dev did not exit on SIGINT:\n{output()}") from None
    assert code == 0, f"aioflow dev exited {code}:\n{output()}"


async def test_second_dev_in_the_same_data_dir_refuses(tmp_path: Path, data_dir: Path) -> None:
    log_path = tmp_path / "dev.log"
    first = _start_dev(free_port(), data_dir, log_path)

    def output() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    try:
        await wait_until(
            lambda: bool(_url_file(data_dir)) or first.poll() is not None,
            timeout=30,
            what="the first dev to write its Redis URL",
        )
        url = _url_file(data_dir)
        assert url, output()
        pids = _redis_pids(data_dir)
        assert len(pids) == 1

        code, out, err = await run_aioflow(
            "dev", "examples/hello.py:app", "--port", str(free_port()), "--data-dir", str(data_dir)
        )
        assert code == 2, (out, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert "already running" in err and f"pid {first.pid}" in err and url in err, err
        # nothing of the first was touched
        assert _url_file(data_dir) == url
        assert _redis_pids(data_dir) == pids
        assert first.poll() is None, output()
        _stop(first, output)
        await wait_until(lambda: not _redis_pids(data_dir), timeout=15, what="its Redis to stop")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)


async def test_dev_takes_over_the_lock_of_a_killed_dev(tmp_path: Path, data_dir: Path) -> None:
    """SIGKILL leaves the lock file and a redis-server running on the data: the next dev
    takes the lock, stops that server (its AOF written out) and serves the same data."""
    first_port, second_port = free_port(), free_port()
    logs = tmp_path / "first.log", tmp_path / "second.log"
    first = _start_dev(first_port, data_dir, logs[0])
    second: subprocess.Popen[bytes] | None = None

    def output(i: int) -> Callable[[], str]:
        return lambda: logs[i].read_text(errors="replace")[-4000:]

    try:
        await _serving(f"http://127.0.0.1:{first_port}", first, output(0))
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{first_port}/flow/hello?wait=5"
            async with session.post(url, json={"name": "x"}) as resp:
                assert resp.status == 200, await resp.text()
                rid = resp.headers["X-Run-Id"]
        old_url = _url_file(data_dir)
        (orphan,) = _redis_pids(data_dir)

        first.kill()
        first.wait(timeout=10)
        assert _redis_pids(data_dir) == {orphan}  # what a killed dev leaves behind

        second = _start_dev(second_port, data_dir, logs[1])
        await _serving(f"http://127.0.0.1:{second_port}", second, output(1))
        new_url = _url_file(data_dir)
        assert new_url and new_url != old_url
        (server,) = _redis_pids(data_dir)
        assert server != orphan
        assert f"stopped redis-server pid {orphan}" in output(1)()
        async with aioflow.Client(new_url) as client:  # the same data, from the AOF
            assert (await client.state(rid)).status is aioflow.Status.COMPLETED
        _stop(second, output(1))
        await wait_until(lambda: not _redis_pids(data_dir), timeout=15, what="its Redis to stop")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
