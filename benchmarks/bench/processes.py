"""The worker processes: ``python -m aioflow worker benchmarks/bench_app.py:app`` started,
waited for until every one reads its streams, and stopped."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import bench_app
from redis.asyncio import Redis

from aioflow.store import keys
from aioflow.store.topology import Backend

from . import ROOT

APP_SPEC = "benchmarks/bench_app.py:app"


def start_workers(
    url: str, n: int, concurrency: int, log_dir: Path, processes: int = 1
) -> list[subprocess.Popen[bytes]]:
    """``n`` worker commands, each ``--processes`` worker processes under a supervisor
    when ``processes`` > 1."""
    procs = []
    for i in range(n):
        log = open(log_dir / f"worker{i}.log", "wb")  # the child keeps its own copy
        try:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "aioflow",
                        "--log-level",
                        "WARNING",
                        "worker",
                        APP_SPEC,
                        "--redis-url",
                        url,
                        "--concurrency",
                        str(concurrency),
                        "--grace",
                        "5",
                        *(["--processes", str(processes)] if processes > 1 else []),
                    ],
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        finally:
            log.close()
    return procs


def stop_workers(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 20.0) -> list[int]:
    """SIGTERM every worker, wait for each (SIGKILL after ``timeout``); answers exit codes."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    codes = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            codes.append(p.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def wait_ready(
    nodes: Sequence[Redis],
    procs: Sequence[subprocess.Popen[bytes]],
    log_dir: Path,
    timeout: float = 60.0,
    processes: int = 1,
) -> None:
    """Until every worker process has registered the flows and sits in XREADGROUP.

    (A consumer shows up in XINFO CONSUMERS only once it got a message, so the
    readers are counted in CLIENT LIST instead.)
    """
    names = [f.name for f in bench_app.app.flows]
    deadline = time.monotonic() + timeout
    backend = Backend(nodes[0])  # a RedisCluster when the nodes are a cluster's
    await backend.start()
    await backend.fast.aclose()
    registry = backend.redis
    try:
        while True:
            for i, p in enumerate(procs):
                if p.poll() is not None:
                    log = tail(log_dir / f"worker{i}.log")
                    raise RuntimeError(f"worker {i} exited with {p.returncode}:\n{log}")
            registered = await registry.hmget(keys.FLOWS, names)
            readers = [
                c for n in nodes for c in await n.client_list() if c.get("cmd") == "xreadgroup"
            ]
            if all(registered) and len(readers) >= len(procs) * processes:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"workers not ready after {timeout}s "
                    f"({len(readers)} of {len(procs) * processes} reading)"
                )
            await asyncio.sleep(0.05)
    finally:
        if registry is not nodes[0]:
            await registry.aclose()
