"""One pass of the benchmark: redis-server (unless ``--redis-url``) and the workers
started, every workload warmed up and run ``--repeat`` times, metered, and everything
stopped again (:func:`collect`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import bench_app
import uvloop
from procstat import children_of

import aioflow
from aioflow.store.redis_server import RedisServer, free_port

from .metering import Meter, Node, Profiler, Straced, machine_load, wait_quiet
from .processes import start_workers, stop_workers, tail, wait_ready
from .workloads import (
    SPECS,
    W2_WARMUP,
    WARMUP_SCALE,
    Outcome,
    Spec,
    bulk_then_wait,
    events_then_resume,
    round_trips,
    scaled,
    submit_then_wait,
)


@dataclass
class Options:
    """What to run, and how (the flags, see :func:`bench.cli.parse_args`)."""

    only: list[str]
    scale: float
    workers: int
    concurrency: int
    profile: Path | None
    profile_rate: int
    profile_native: bool
    wait_quiet: float
    repeat: int
    script_stats: bool
    processes: int = 1
    redis_urls: list[str] = field(default_factory=list)  # empty: start a redis-server
    warmup: bool = True
    strace: Path | None = None


async def measure(
    client: aioflow.Client,
    nodes: list[Node],
    spec: Spec,
    n: int,
    opts: Options,
    pids: list[int],
    profiler: Profiler | None,
    straced: Straced | None = None,
) -> Outcome:
    """Run one workload once, metered (and profiled with ``--profile``)."""
    meter = Meter(nodes, pids, slowlog=opts.script_stats)
    profiles: dict[str, Any] = {}
    work: Coroutine[Any, Any, Outcome]
    if spec.key == "W2":
        work = round_trips(client, spec, n, scaled(W2_WARMUP, opts.scale), meter)
    elif spec.key == "W6":
        work = events_then_resume(client, spec, n, meter)
    elif spec.batch:
        work = bulk_then_wait(client, spec, n, meter)
    else:
        work = submit_then_wait(client, spec, n, meter)
    with (
        profiler.record(spec.key, profiles) if profiler else contextlib.nullcontext(),
        straced.record(spec.key, profiles) if straced else contextlib.nullcontext(),
    ):
        out = await work  # it starts the meter itself (W2: after its warm-up)
        out.usage = await meter.stop(n * spec.vertices, "results")
    out.profiles = profiles
    return out


async def bench(
    url: str, opts: Options, procs: Sequence[subprocess.Popen[bytes]], log_dir: Path
) -> tuple[dict[str, Any], list[Outcome]]:
    # SIGTERM cancels the run cleanly (the caller then stops workers and redis)
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    nodes = [await Node.open(u) for u in opts.redis_urls or [url]]
    redis = nodes[0].redis
    pids = [p.pid for p in procs]
    try:
        await wait_ready([n.redis for n in nodes], procs, log_dir, processes=opts.processes)
        server = await redis.info("server")
        env = {
            "redis_version": server["redis_version"],
            "appendonly": (await redis.config_get("appendonly"))["appendonly"],
            "redis_nodes": len(nodes),
            "redis_cpu_from": "/proc" if all(n.pid for n in nodes) else "INFO cpu",
        }
        targets = children_of(pids) if opts.processes > 1 else pids
        profiler = (
            Profiler(opts.profile, targets, opts.profile_rate, native=opts.profile_native)
            if opts.profile
            else None
        )
        straced = None
        if opts.strace:
            names = {f"worker{i}": pid for i, pid in enumerate(targets)}
            names["client"] = os.getpid()
            if nodes[0].pid:
                names["redis"] = nodes[0].pid
            straced = Straced(opts.strace, names)
        outcomes: list[Outcome] = []
        async with aioflow.Client(url) as client:
            # warm every flow up (scripts loaded, connections open, caches filled); the
            # waiting flow (W6) only runs when its events come: its warm-up round does it
            for f in bench_app.app.flows:
                if f is bench_app.waiting:
                    continue
                for i in range(20):
                    assert await client.execute(f.name, i, timeout=30) == bench_app.expected(
                        f.name, i
                    )
            if opts.warmup:  # one smaller, unmetered round of each workload
                print(f"  warm-up ({WARMUP_SCALE:g} of each workload) ...", end="", flush=True)
                for key in opts.only:
                    n = scaled(SPECS[key].count, opts.scale * WARMUP_SCALE)
                    await measure(client, nodes, SPECS[key], n, opts, pids, None)
                print(" done")
            runs: dict[str, list[Outcome]] = {key: [] for key in opts.only}
            for rep in range(opts.repeat):
                for key in opts.only:
                    spec = SPECS[key]
                    n = scaled(spec.count, opts.scale)
                    round_ = f" (round {rep + 1}/{opts.repeat})" if opts.repeat > 1 else ""
                    print(f"  {key}: {n:,} {spec.title}{round_} ...", end="", flush=True)
                    out = await measure(client, nodes, spec, n, opts, pids, profiler, straced)
                    runs[key].append(out)
                    bad = f", {len(out.errors)} ERRORS" if out.errors else ""
                    print(f" {out.seconds:.2f}s{bad}")
                    for p in procs:
                        if p.poll() is not None:
                            raise RuntimeError(f"worker pid {p.pid} died with {p.returncode}")
            for key in opts.only:
                # the median round stands for the workload; all rounds are kept in the JSON
                ranked = sorted(runs[key], key=lambda o: o.value)
                out = ranked[(len(ranked) - 1) // 2]
                out.rounds = [o.value for o in runs[key]]
                out.errors = [e for o in runs[key] for e in o.errors]
                outcomes.append(out)
        return env, outcomes
    finally:
        for node in nodes:
            await node.redis.aclose()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Suite:
    """What one run of the benchmark collected."""

    env: dict[str, Any]
    outcomes: list[Outcome]
    codes: list[int]
    load: float
    stamp: str


def collect(opts: Options) -> Suite:
    """Start redis-server (unless ``opts.redis_urls``) and the workers, run the workloads,
    stop everything."""
    signal.signal(signal.SIGTERM, _terminate)
    load = wait_quiet(2.0, opts.wait_quiet) if opts.wait_quiet else machine_load()
    if load > 0.2:
        print(
            f"WARNING: other processes keep {load:.2f} of {os.cpu_count()} cores busy: "
            "the figures will be low and noisy (see 'other procs' below; --wait-quiet)",
            flush=True,
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="aioflow-bench-") as tmp:
        tmpdir = Path(tmp)
        server = RedisServer(dir=tmpdir / "redis", port=free_port(), appendonly=False)
        try:
            if opts.redis_urls:
                url = opts.redis_urls[0]
                where = f"the given Redis ({len(opts.redis_urls)} node(s) metered)"
            else:
                server.start()
                url = server.url
                where = f"redis-server on {url} (appendonly off, no persistence)"
            print(
                f"{where}; {opts.workers} worker command(s) x {opts.processes} process(es) x "
                f"concurrency {opts.concurrency}; scale {opts.scale:g}",
                flush=True,
            )
            procs = start_workers(url, opts.workers, opts.concurrency, tmpdir, opts.processes)
            env, outcomes = uvloop.run(bench(url, opts, procs, tmpdir))
        except BaseException:
            for i in range(len(procs)):
                log = tail(tmpdir / f"worker{i}.log")
                if log:
                    print(f"--- worker {i} log ---\n{log}", file=sys.stderr)
            raise
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the clean-up finish
            codes = stop_workers(procs)
            server.stop()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        bad_exit = [c for c in codes if c != 0]
        if bad_exit:
            for i in range(len(procs)):
                print(f"--- worker {i} log ---\n{tail(tmpdir / f'worker{i}.log')}", file=sys.stderr)
    return Suite(env, outcomes, codes, load, stamp)
