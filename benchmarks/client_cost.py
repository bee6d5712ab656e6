"""The client's CPU per call, without a worker competing for the cores.

Two phases against a Redis this script starts on loopback (a single
redis-server, or a local cluster with ``--masters N``):

- ``submit``: N sequential ``client.submit`` calls with no worker running,
  so nothing but the client and Redis is busy;
- ``result``: a worker process (``aioflow worker``) completes those runs, is
  stopped, and then N ``client.result`` calls of finished runs are gathered.

It prints the client's CPU µs per call (``time.process_time``) and Redis's
(every master's, metered as ``run.py`` does: ``/proc``, else ``INFO cpu``),
and, for reference, the same for a bare ``PING`` round trip on the same lean
connection: the floor of any call that waits for its reply.
``--profile`` adds a cProfile listing of each phase (cProfile roughly doubles
the figures).

Usage: python benchmarks/client_cost.py [--n 20000] [--masters 0] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import uvloop

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_app  # noqa: E402
import run  # noqa: E402

import aioflow  # noqa: E402
from aioflow.redis_cluster import LocalCluster  # noqa: E402
from aioflow.store.redis_server import RedisServer  # noqa: E402

FLOW = "bench-single"


async def _redis_cpu(nodes: Sequence[run.Node]) -> float:
    """CPU seconds (user + system) every master has used so far."""
    return sum([sum(await n.cpu()) for n in nodes])


async def _timed(
    label: str, n: int, profile: bool, nodes: Sequence[run.Node], fn: Callable[[], Awaitable[Any]]
) -> None:
    prof = cProfile.Profile() if profile else None
    r0 = await _redis_cpu(nodes)
    t0 = time.process_time()
    if prof is not None:
        prof.enable()
    await fn()
    if prof is not None:
        prof.disable()
    cpu = time.process_time() - t0
    rcpu = await _redis_cpu(nodes) - r0
    print(
        f"{label:<8} {1e6 * cpu / n:7.1f} us of client CPU, {1e6 * rcpu / n:7.1f} us of Redis "
        f"CPU per call ({n:,} calls)",
        flush=True,
    )
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


async def measure(url: str, n: int, profile: bool) -> None:
    flow = next(f for f in bench_app.app.flows if f.name == FLOW)
    async with aioflow.Client(url) as client:
        ids = [await client.submit(flow, i) for i in range(200)]  # registers, warms up
        fast = client.engine.fast
        nodes = [await run.Node.open(f"redis://{h}:{p}/0") for h, p in fast.masters]

        async def pings() -> None:
            for _ in range(n):
                await fast.execute("PING")

        async def submits() -> None:
            ids.extend([await client.submit(FLOW, i) for i in range(n)])

        await _timed("ping", n, False, nodes, pings)
        await _timed("submit", n, profile, nodes, submits)
        worker = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "aioflow", "worker", f"{HERE / 'bench_app.py'}:app"],
            *["--redis-url", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            # every run done: the last one submitted is among the last to finish
            while not (await client.state(ids[-1])).status.finished:
                if time.monotonic() > deadline or worker.returncode is not None:
                    raise SystemExit("the worker did not finish the runs")
                await asyncio.sleep(0.1)
            for rid in ids[-50:]:  # and those before it
                await client.result(rid, timeout=60)
        finally:
            worker.terminate()
            await asyncio.wait_for(worker.wait(), 30)
        last = ids[-n:]

        async def results() -> None:
            await asyncio.gather(*(client.result(rid, timeout=60) for rid in last))

        await _timed("result", n, profile, nodes, results)
        for node in nodes:
            await node.redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="aioflow client CPU per submit and per result")
    p.add_argument("--n", type=int, default=20_000, help="calls per phase")
    p.add_argument("--masters", type=int, default=0, help="a local cluster of N masters")
    p.add_argument("--profile", action="store_true", help="cProfile each phase")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aioflow-client-") as tmp:
        server: AbstractContextManager[Any]
        if a.masters:
            server = LocalCluster(Path(tmp), masters=a.masters, replicas=0)
        else:
            server = RedisServer(dir=Path(tmp), appendonly=False)
        with server as s:
            print(f"{s.url} ({'cluster of ' + str(a.masters) if a.masters else 'one server'})")
            uvloop.run(measure(s.url, a.n, a.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
