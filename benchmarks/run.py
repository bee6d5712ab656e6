"""aioflow benchmarks (``make bench``).

Starts its own ``redis-server`` (appendonly off: nothing is fsynced, as in the
peers' measurements), starts worker processes (``python -m aioflow worker
benchmarks/bench_app.py:app``, uvloop) and drives the client from this process
(uvloop too). Workloads, as the peer systems were measured on the same machine:

- W1: 10,000 single-node runs submitted one after another, then all results
  awaited; runs/s from the first submit to the last result.
- W2: 300 sequential ``client.execute()`` round trips of a single-node flow after
  50 warm-up ones; p50 / p99 latency.
- W3: 1,000 three-node chains (submit all, then await all); chains/s.
- W4: 200 runs of entry -> 10 parallel nodes -> join; runs/s.

Besides the figures it measures, per workload, the CPU seconds spent by
redis-server (INFO cpu), the workers (/proc) and this client process, and the
Redis command statistics (INFO commandstats, reset before each workload), so
the output tells what bounds each workload. ``--profile DIR`` also samples the
workers and the client with py-spy (``.venv/bin/pip install py-spy``).

Results go to ``benchmarks/results/<timestamp>.json`` and ``latest.json``.

Usage: python benchmarks/run.py [--only W1,W3] [--scale 0.1] [--workers N]
       [--concurrency C] [--repeat N] [--wait-quiet SECONDS] [--script-stats]
       [--profile DIR [--profile-rate HZ] [--profile-native]]

The machine is shared: the CPU used by other processes during each workload is
reported ("other procs"); a warning is printed when it was busy before the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_app  # noqa: E402
import pyspy  # noqa: E402
import uvloop  # noqa: E402
from procstat import children_of, local_redis_pid, proc_cpu, tree_cpu  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

import aioflow  # noqa: E402
from aioflow.app import connect  # noqa: E402
from aioflow.store import keys  # noqa: E402
from aioflow.store.redis_server import RedisServer, free_port  # noqa: E402
from aioflow.store.scripts import SCRIPTS  # noqa: E402
from aioflow.store.topology import Backend  # noqa: E402

RESULTS = HERE / "results"
APP_SPEC = "benchmarks/bench_app.py:app"
RESULT_TIMEOUT = 600.0
SLOWLOG_MAX = 1_000_000
METER_COMMANDS = ("info", "config", "slowlog", "client")  # the meter's own, left out
MORE_ARGS = re.compile(rb"\.\.\. \((\d+) more arguments\)$")
CLK_TCK = os.sysconf("SC_CLK_TCK")
UVLOOP_VERSION: str = getattr(uvloop, "__version__", "?")


# -- what is measured, and what it is compared with ------------------------------------


@dataclass(frozen=True)
class Spec:
    key: str
    title: str
    count: int
    vertices: int  # vertex executions per run
    flow: str
    peer: float
    peer_label: str
    prototype: float
    unit: str
    batch: int = 0  # W5: runs per submit_many call


# Peer figures: saq and arq measured on this machine against the same Redis, in one run,
# on 2026-12-01 (the best of the two for each workload).
SPECS = {
    "W1": Spec(
        "W1", "single-node runs", 10_000, 1, "bench-single", 1712, "1,712 runs/s (arq)", 14_000,
        "runs/s",
    ),
    "W2": Spec(
        "W2", "execute() round trips", 300, 1, "bench-single", 1.53, "1.53 ms (saq)", 0.15, "ms",
    ),
    "W3": Spec(
        "W3", "three-node chains", 1_000, 3, "bench-chain", 395, "395 chains/s (arq)", 13_000,
        "chains/s",
    ),
    "W4": Spec(
        "W4", "10-way fan-out runs", 200, 12, "bench-fanout", 114, "114 runs/s (arq)", 7_000,
        "runs/s",
    ),
    "W5": Spec(
        "W5", "bulk-submitted runs", 100_000, 1, "bench-single", 0, "-", 0, "runs/s",
        batch=1000,
    ),
}  # fmt: skip
# CPU per single-vertex run (W1) of the peers, client + worker + Redis, same measurement
PEER_CPU_US = {"arq": 1023, "saq": 1419}
W2_WARMUP = 50
AWAIT_CHUNK = 10_000
WARMUP_SCALE = 0.1  # an unmetered round of each workload at this share of its size first


@dataclass
class Outcome:
    """What one workload measured."""

    spec: Spec
    count: int
    seconds: float
    value: float  # runs/s, or p50 ms for W2
    extra: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    rounds: list[float] = field(default_factory=list)  # the value of every round
    samples: list[float] = field(default_factory=list)  # W2: every latency, in call order


# -- resource accounting -----------------------------------------------------------------


def system_cpu() -> float:
    """CPU seconds all processes of the machine have used (busy time of /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class Node:
    """One Redis server metered: its CPU from /proc when it runs on this machine (the
    pid ``INFO server`` reports), else from ``INFO cpu``."""

    redis: Redis
    pid: int | None = None
    meter_calls: int = 0  # commands the meter itself sent (left out of the counts)

    @classmethod
    async def open(cls, url: str) -> Node:
        redis = connect(url)
        info = await redis.info("server")
        return cls(redis, local_redis_pid(int(info["process_id"])))

    async def cpu(self) -> tuple[float, float]:
        """CPU seconds (user, system) redis-server has used so far."""
        if self.pid is not None:
            return proc_cpu(self.pid)
        self.meter_calls += 1
        info = await self.redis.info("cpu")
        return float(info["used_cpu_user"]), float(info["used_cpu_sys"])

    async def reads(self) -> int:
        """Reads from client sockets so far: one per request or pipeline = a round trip."""
        self.meter_calls += 1
        info = await self.redis.info("stats")
        return int(info.get("total_reads_processed", 0))


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds used so far, each (user, system), and the wall clock."""

    wall: float
    redis: tuple[float, float]
    workers: tuple[float, float]
    client: tuple[float, float]
    system: float

    def minus(self, other: Snapshot) -> dict[str, float]:
        out = {"wall_s": round(self.wall - other.wall, 4)}
        ours = 0.0
        for name in ("redis", "worker", "client"):
            attr = "workers" if name == "worker" else name
            (u1, s1), (u0, s0) = getattr(self, attr), getattr(other, attr)
            out[f"{name}_cpu_s"] = round(u1 - u0 + s1 - s0, 4)
            out[f"{name}_sys_s"] = round(s1 - s0, 4)  # in the kernel (syscalls, network)
            ours += u1 - u0 + s1 - s0
        # CPU used by processes other than ours (other load on the machine)
        out["other_cpu_s"] = round(max(0.0, self.system - other.system - ours), 4)
        return out


class Meter:
    """CPU of redis-server, the workers and this process over a workload (and over
    its phases, see :meth:`mark`), and the Redis command statistics of that span."""

    def __init__(self, nodes: list[Node], worker_pids: list[int], *, slowlog: bool = False) -> None:
        self.nodes = nodes
        self.redis = nodes[0].redis  # SLOWLOG script stats: of the first node only
        self.worker_pids = worker_pids  # each with its descendants (--processes)
        self.slowlog = slowlog
        self.marks: list[tuple[str, Snapshot]] = []
        self.node_cpu0: list[float] = []
        self.reads0 = 0

    async def snapshot(self) -> Snapshot:
        rcpu = [await n.cpu() for n in self.nodes]
        me = resource.getrusage(resource.RUSAGE_SELF)  # microsecond resolution
        return Snapshot(
            time.perf_counter(),
            (sum(c[0] for c in rcpu), sum(c[1] for c in rcpu)),
            tree_cpu(self.worker_pids),
            (me.ru_utime, me.ru_stime),
            system_cpu(),
        )

    async def start(self) -> None:
        for n in self.nodes:
            await n.redis.config_resetstat()
        self.reads0 = sum([await n.reads() for n in self.nodes])
        for n in self.nodes:
            n.meter_calls = 0
        if self.slowlog:
            await self.redis.config_set("slowlog-max-len", SLOWLOG_MAX)
            await self.redis.config_set("slowlog-log-slower-than", 0)
            await self.redis.slowlog_reset()
        self.marks = [("start", await self.snapshot())]
        self.node_cpu0 = [sum(await n.cpu()) for n in self.nodes]

    async def mark(self, phase: str) -> None:
        """End the phase ``phase`` here (the next one starts)."""
        self.marks.append((phase, await self.snapshot()))

    async def stop(self, vertices: int, last_phase: str = "end") -> dict[str, Any]:
        await self.mark(last_phase)
        node_cpu = [
            sum(await n.cpu()) - c0 for n, c0 in zip(self.nodes, self.node_cpu0, strict=True)
        ]
        reads = sum([await n.reads() for n in self.nodes])
        reads -= self.reads0 + sum(n.meter_calls for n in self.nodes)
        merged: dict[str, list[int]] = {}
        for n in self.nodes:
            for k, v in (await n.redis.info("commandstats")).items():
                if isinstance(v, dict):
                    calls_usec = merged.setdefault(k.removeprefix("cmdstat_"), [0, 0])
                    calls_usec[0] += int(v["calls"])
                    calls_usec[1] += int(v["usec"])
        commands: list[dict[str, Any]] = sorted(
            (
                {
                    "command": name,
                    "calls": calls,
                    "usec": usec,
                    "usec_per_call": round(usec / calls, 2) if calls else 0.0,
                }
                for name, (calls, usec) in merged.items()
                if not name.startswith(METER_COMMANDS)
            ),
            key=lambda c: -int(c["usec"]),
        )
        scripts = await self._scripts() if self.slowlog else None
        total = self.marks[-1][1].minus(self.marks[0][1])
        per_vertex = 1e6 / vertices if vertices else 0.0
        calls = sum(c["calls"] for c in commands)
        evalsha = sum(c["calls"] for c in commands if c["command"] in ("evalsha", "eval"))
        out: dict[str, Any] = {
            **total,
            "vertices": vertices,
            "redis_us_per_vertex": round(total["redis_cpu_s"] * per_vertex, 2),
            # each master's share: its CPU over all vertices of the workload
            "redis_us_per_vertex_by_node": [round(c * per_vertex, 2) for c in node_cpu],
            "worker_us_per_vertex": round(total["worker_cpu_s"] * per_vertex, 2),
            "client_us_per_vertex": round(total["client_cpu_s"] * per_vertex, 2),
            "total_us_per_vertex": round(
                (total["redis_cpu_s"] + total["worker_cpu_s"] + total["client_cpu_s"]) * per_vertex,
                2,
            ),
            # every command Redis ran, those called inside scripts included
            "commands_per_vertex": round(calls / vertices, 2) if vertices else 0.0,
            "evalsha_per_vertex": round(evalsha / vertices, 3) if vertices else 0.0,
            "round_trips_per_vertex": round(reads / vertices, 3) if vertices else 0.0,
            "commands": commands[:15],
            **({"scripts": scripts} if scripts is not None else {}),
        }
        if len(self.marks) > 2:
            out["phases"] = {
                name: snap.minus(prev)
                for (_, prev), (name, snap) in zip(self.marks, self.marks[1:], strict=False)
            }
        return out

    async def _scripts(self) -> list[dict[str, Any]]:
        """Time per call of each script (and of the other commands), from a SLOWLOG that
        recorded every command (``--script-stats``)."""
        entries = await self.redis.slowlog_get(-1)
        await self.redis.config_set("slowlog-log-slower-than", 10000)
        await self.redis.slowlog_reset()
        if len(entries) >= SLOWLOG_MAX:
            print(" (slowlog full: script stats cover only the last part)", end="")
        names = {sha.encode(): name for name, sha in SCRIPTS.sha.items()}
        agg: dict[str, list[tuple[int, int]]] = {}
        for e in entries:
            cmd: bytes = e["command"]
            tokens = cmd.split(b" ")
            head = tokens[0].decode().lower()
            if head in ("slowlog", "config", "info"):
                continue
            if head == "evalsha" and len(tokens) > 1:
                head = f"evalsha {names.get(tokens[1], tokens[1][:8].decode())}"
            more = MORE_ARGS.search(cmd)
            nargs = 31 + int(more.group(1)) if more else len(tokens)
            agg.setdefault(head, []).append((int(e["duration"]), nargs))
        out = []
        for head, calls in agg.items():
            durations = sorted(d for d, _ in calls)
            out.append(
                {
                    "command": head,
                    "calls": len(calls),
                    "usec": sum(durations),
                    "usec_per_call": round(sum(durations) / len(calls), 2),
                    "p50_usec": durations[len(durations) // 2],
                    "max_usec": durations[-1],
                    "args_per_call": round(sum(n for _, n in calls) / len(calls), 1),
                }
            )
        return sorted(out, key=lambda c: -c["usec"])


class Profiler:
    """py-spy on every worker and on this process for the span of one workload."""

    def __init__(
        self, out_dir: Path, worker_pids: list[int], rate: int, *, native: bool = False
    ) -> None:
        exe = pyspy.find_pyspy()
        if exe is None:
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.exe = exe
        self.out_dir = out_dir
        self.targets = {f"worker{i}": pid for i, pid in enumerate(worker_pids)}
        self.targets["client"] = os.getpid()
        self.rate = rate
        self.native = native

    @contextlib.contextmanager
    def record(self, workload: str, sink: dict[str, Any]) -> Iterator[None]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        recs: dict[str, pyspy.Recorder] = {}
        try:
            for name, pid in self.targets.items():
                out = self.out_dir / f"{workload}-{name}.raw"
                recs[name] = pyspy.Recorder(self.exe, pid, out, rate=self.rate, native=self.native)
            yield
        finally:
            for name, rec in recs.items():
                seconds = rec.stop()
                summary = pyspy.summarise(rec.out, seconds, rec.rate)
                sink[name] = summary.to_json()
                text = summary.text(f"{workload} {name} (pid {rec.pid})")
                (self.out_dir / f"{workload}-{name}.txt").write_text(text + "\n")


class Straced:
    """``strace -c -f`` on the workers, this process and redis-server for the span of one
    workload: syscall counts and kernel time per process (strace slows each one down)."""

    def __init__(self, out_dir: Path, targets: dict[str, int]) -> None:
        if shutil.which("strace") is None:
            raise SystemExit("--strace needs strace on PATH")
        self.out_dir = out_dir
        self.targets = targets

    @contextlib.contextmanager
    def record(self, workload: str, sink: dict[str, Any]) -> Iterator[None]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        try:
            for name, pid in self.targets.items():
                out = self.out_dir / f"{workload}-{name}.strace"
                cmd = ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)]
                procs[name] = (subprocess.Popen(cmd, stderr=subprocess.DEVNULL), out)
            time.sleep(0.5)  # let strace attach to every thread
            yield
        finally:
            for name, (proc, out) in procs.items():
                proc.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
                sink[f"strace-{name}"] = out.read_text() if out.exists() else ""


# -- the workloads -----------------------------------------------------------------------


def scaled(n: int, scale: float) -> int:
    return max(1, round(n * scale))


async def _await_all(
    client: aioflow.Client, flow: str, ids: Sequence[str], first: int, errors: list[str]
) -> None:
    results = await asyncio.gather(
        *(client.result(rid, timeout=RESULT_TIMEOUT) for rid in ids), return_exceptions=True
    )
    for i, r in enumerate(results):
        want = bench_app.expected(flow, first + i)
        if isinstance(r, BaseException):
            errors.append(f"{ids[i]}: {type(r).__name__}: {r}")
        elif r != want:
            errors.append(f"{ids[i]}: got {r!r}, expected {want!r}")


async def submit_then_wait(client: aioflow.Client, spec: Spec, n: int, meter: Meter) -> Outcome:
    """Submit ``n`` runs one after another, then await every result (W1, W3, W4)."""
    errors: list[str] = []
    await meter.start()
    t0 = time.perf_counter()
    ids = [await client.submit(spec.flow, i) for i in range(n)]
    submitted = time.perf_counter() - t0
    await meter.mark("submit")
    await _await_all(client, spec.flow, ids, 0, errors)
    seconds = time.perf_counter() - t0
    return Outcome(
        spec,
        n,
        seconds,
        n / seconds,
        extra={"submit_s": round(submitted, 4), "submits_per_s": round(n / submitted, 1)},
        errors=errors,
    )


async def bulk_then_wait(client: aioflow.Client, spec: Spec, n: int, meter: Meter) -> Outcome:
    """Submit ``n`` runs with ``submit_many`` in batches of ``spec.batch``, then await every
    result (W5)."""
    errors: list[str] = []
    await meter.start()
    t0 = time.perf_counter()
    ids: list[str] = []
    for first in range(0, n, spec.batch):
        ids += await client.submit_many(spec.flow, range(first, min(n, first + spec.batch)))
    submitted = time.perf_counter() - t0
    await meter.mark("submit")
    for first in range(0, n, AWAIT_CHUNK):  # bounded memory for 100k waits
        await _await_all(client, spec.flow, ids[first : first + AWAIT_CHUNK], first, errors)
    seconds = time.perf_counter() - t0
    return Outcome(
        spec,
        n,
        seconds,
        n / seconds,
        extra={"submit_s": round(submitted, 4), "submits_per_s": round(n / submitted, 1)},
        errors=errors,
    )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    k = max(0, math.ceil(q / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


async def round_trips(
    client: aioflow.Client, spec: Spec, n: int, warmup: int, meter: Meter
) -> Outcome:
    """``warmup`` then ``n`` sequential ``execute()`` calls (W2); only the latter are metered."""
    errors: list[str] = []
    for i in range(warmup):
        await client.execute(spec.flow, i, timeout=30)
    await meter.start()
    lat: list[float] = []
    gc_before = sum(g["collections"] for g in gc.get_stats())
    t0 = time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        try:
            r = await client.execute(spec.flow, i, timeout=30)
        except aioflow.AioflowError as e:
            errors.append(f"execute #{i}: {type(e).__name__}: {e}")
            continue
        lat.append((time.perf_counter() - s) * 1000)
        if r != bench_app.expected(spec.flow, i):
            errors.append(f"execute #{i}: got {r!r}")
    seconds = time.perf_counter() - t0
    gcs = sum(g["collections"] for g in gc.get_stats()) - gc_before
    in_order = [round(x, 4) for x in lat]
    lat.sort()
    if not lat:
        lat = [math.nan]
    out = Outcome(
        spec,
        n,
        seconds,
        percentile(lat, 50),
        extra={
            "p50_ms": round(percentile(lat, 50), 4),
            "p90_ms": round(percentile(lat, 90), 4),
            "p99_ms": round(percentile(lat, 99), 4),
            "max_ms": round(lat[-1], 4),
            "mean_ms": round(sum(lat) / len(lat), 4),
            "warmup": warmup,
            "client_gc_collections": gcs,
        },
        errors=errors,
    )
    out.samples = in_order
    return out


# -- processes ---------------------------------------------------------------------------


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


# -- the run -----------------------------------------------------------------------------


def machine_load(window: float = 1.0) -> float:
    """Cores kept busy by the machine over ``window`` seconds (before we start anything)."""
    before = system_cpu()
    time.sleep(window)
    return (system_cpu() - before) / window


def wait_quiet(limit: float, max_wait: float, threshold: float = 0.2) -> float:
    """Wait up to ``max_wait`` seconds for a second in which other processes keep
    fewer than ``threshold`` cores busy; answers the last load seen."""
    deadline = time.monotonic() + max_wait
    load = machine_load()
    while load > threshold and time.monotonic() < deadline:
        print(f"  machine busy ({load:.2f} cores used by other processes); waiting ...", flush=True)
        load = machine_load(min(limit, max(1.0, deadline - time.monotonic())))
    return load


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


@dataclass
class Options:
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
            # warm every flow up (scripts loaded, connections open, caches filled)
            for f in bench_app.app.flows:
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


def fmt_value(key: str, v: float) -> str:
    if key == "W2":
        return f"{v:.3f} ms"
    return f"{v:,.0f} {SPECS[key].unit}"


def ratio(key: str, ours: float, theirs: float) -> float:
    """> 1 means aioflow is better (throughput: ours/theirs, latency: theirs/ours)."""
    if not theirs:
        return math.nan
    if key == "W2":
        return theirs / ours if ours else math.inf
    return ours / theirs


def _x(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}x"


COLUMNS = (
    "workload",
    "aioflow",
    "best peer",
    "vs peer",
    "vs proto",
    "client",
    "worker",
    "redis",
    "total",
    "cmds",
    "evalsha",
    "trips",
)


def table(outcomes: Sequence[Outcome]) -> str:
    """The one table: throughput against the peers, and per vertex the CPU microseconds
    of each process, the Redis commands (those inside scripts included), the EVALSHA
    calls and the round trips (socket reads Redis served)."""
    rows: list[tuple[str, ...]] = [COLUMNS]
    for o in outcomes:
        s, u = o.spec, o.usage
        label = f"{s.key} {o.count:,} {s.title}"
        if s.key == "W2":
            label = f"W2 execute() p50 ({o.count} calls)"
        rows.append(
            (
                label,
                fmt_value(s.key, o.value),
                s.peer_label,
                _x(ratio(s.key, o.value, s.peer)),
                _x(ratio(s.key, o.value, s.prototype)),
                *(f"{u[f'{k}_us_per_vertex']:.1f}" for k in ("client", "worker", "redis", "total")),
                f"{u['commands_per_vertex']:.2f}",
                f"{u['evalsha_per_vertex']:.2f}",
                f"{u['round_trips_per_vertex']:.2f}",
            )
        )
        if s.key == "W2":
            rows.append(("W2 execute() p99", f"{o.extra['p99_ms']:.3f} ms", *[""] * 10))
    if any(len(o.rounds) > 1 for o in outcomes):
        rows.append(("",) * len(COLUMNS))
        for o in outcomes:
            values = ", ".join(fmt_value(o.spec.key, v).split()[0] for v in o.rounds)
            rows.append((f"{o.spec.key} rounds (median shown)", values, *[""] * 10))
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [
        " " * (sum(widths[:5]) + 10)
        + "per vertex: CPU us".ljust(sum(widths[5:9]) + 8)
        + "  Redis calls, round trips"
    ]
    for j, r in enumerate(rows):
        cells = [c.ljust(widths[i]) if i in (0, 2) else c.rjust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    peers = ", ".join(f"{k} {v:,} us" for k, v in PEER_CPU_US.items())
    lines.append(f"(peers' CPU per W1 run, client + worker + Redis: {peers})")
    return "\n".join(lines)


def usage_table(outcomes: Sequence[Outcome]) -> str:
    """CPU seconds (and share of wall time) of each process, per workload and phase."""
    procs = ("redis", "worker", "client")
    lines = [
        "CPU seconds (% of wall time: 100% = one core busy; k: share of it in the kernel)",
        f"{'workload':12} {'wall s':>7}  {'redis-server':20}{'worker(s)':20}{'client':20}"
        f"{'other procs':13}  {'CPU us per vertex: redis worker client':>38}",
    ]

    def row(label: str, u: dict[str, Any], vertices: int | None) -> str:
        w = u["wall_s"] or 1.0
        cells = ""
        for k in procs:
            cpu, sys_ = u[f"{k}_cpu_s"], u[f"{k}_sys_s"]
            cells += f"{cpu:5.2f} ({cpu / w:4.0%} k{sys_ / (cpu or 1):4.0%})  "
        cells += f"{u['other_cpu_s']:5.2f} ({u['other_cpu_s'] / w:4.0%})  "
        per = ""
        if vertices:
            per = " " * 19 + "".join(f"{u[f'{k}_cpu_s'] * 1e6 / vertices:7.1f}" for k in procs)
        return f"{label:12} {u['wall_s']:7.2f}  {cells}{per}".rstrip()

    for o in outcomes:
        u = o.usage
        lines.append(row(o.spec.key, u, u["vertices"]))
        for phase, pu in u.get("phases", {}).items():
            lines.append(row(f"  {phase}", pu, None))
    lines.append("Redis commands by time (INFO commandstats; calls from inside scripts included):")
    for o in outcomes:
        top = o.usage["commands"][:6]
        desc = ", ".join(f"{c['command']} {c['calls']:,}x{c['usec_per_call']:.1f}us" for c in top)
        lines.append(f"  {o.spec.key}: {desc}")
    if any("scripts" in o.usage for o in outcomes):
        lines.append("Per script / command (SLOWLOG, --script-stats): calls x mean us (args/call)")
        for o in outcomes:
            desc = ", ".join(
                f"{c['command']} {c['calls']:,}x{c['usec_per_call']:.1f}us ({c['args_per_call']:g})"
                for c in o.usage.get("scripts", [])[:6]
            )
            lines.append(f"  {o.spec.key}: {desc}")
    return "\n".join(lines)


def write_json(doc: dict[str, Any], stamp: str, profiled: bool) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"{stamp}-profile.json" if profiled else f"{stamp}.json"
    path = RESULTS / name
    text = json.dumps(doc, indent=2) + "\n"
    path.write_text(text)
    if not profiled:  # a profiled run is slowed down by the sampler: not the latest figures
        (RESULTS / "latest.json").write_text(text)
    return path


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(description="aioflow benchmarks (W1-W5)")
    p.add_argument("--only", default=",".join(SPECS), help="workloads to run, e.g. W1,W3")
    p.add_argument("--scale", type=float, default=1.0, help="multiply counts (0.1: quick run)")
    p.add_argument("--workers", type=int, default=1, help="worker commands (default 1)")
    p.add_argument(
        "--processes", type=int, default=1, help="worker processes per command (--processes)"
    )
    p.add_argument(
        "--redis-url",
        default="",
        help="benchmark this Redis (comma-separated URLs: every node is metered; workers and "
        "client use the first) instead of starting a redis-server",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the unmetered warm-up round")
    p.add_argument(
        "--strace", type=Path, default=None, help="strace -c workers, client and redis into DIR"
    )
    p.add_argument("--concurrency", type=int, default=100, help="per worker (default 100)")
    p.add_argument(
        "--repeat", type=int, default=1, help="rounds of each workload; the median is shown"
    )
    p.add_argument(
        "--script-stats",
        action="store_true",
        help="time every Redis call (SLOWLOG at 0 us) to report the cost of each Lua script",
    )
    p.add_argument("--profile", type=Path, default=None, help="py-spy the workers and client")
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument(
        "--profile-native", action="store_true", help="py-spy --native (C frames; pauses)"
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for other processes to leave the CPUs idle",
    )
    a = p.parse_args(argv)
    only = [w.strip().upper() for w in a.only.split(",") if w.strip()]
    bad = [w for w in only if w not in SPECS]
    if bad or not only:
        p.error(f"--only takes a comma-separated subset of {', '.join(SPECS)}; bad: {bad}")
    if a.scale <= 0:
        p.error("--scale must be > 0")
    if a.workers < 1 or a.concurrency < 1 or a.repeat < 1 or a.processes < 1:
        p.error("--workers, --processes, --concurrency and --repeat must be >= 1")
    return Options(
        only,
        a.scale,
        a.workers,
        a.concurrency,
        a.profile,
        a.profile_rate,
        a.profile_native,
        a.wait_quiet,
        a.repeat,
        a.script_stats,
        a.processes,
        [u.strip() for u in a.redis_url.split(",") if u.strip()],
        not a.no_warmup,
        a.strace,
    )


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


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    suite = collect(opts)
    env, outcomes, codes, load, stamp = (
        suite.env,
        suite.outcomes,
        suite.codes,
        suite.load,
        suite.stamp,
    )
    bad_exit = [c for c in codes if c != 0]
    print()
    print(
        f"aioflow {aioflow.__version__} - redis {env['redis_version']} (appendonly "
        f"{env['appendonly']}), Python {platform.python_version()}, uvloop {UVLOOP_VERSION}, "
        f"{opts.workers} worker x {opts.processes} process(es) x {opts.concurrency}, "
        f"{os.cpu_count()} CPUs, scale {opts.scale:g}"
        + (" - PROFILED (py-spy slows things down)" if opts.profile else "")
    )
    print(table(outcomes))
    print("(ratio > 1: aioflow is better - throughput ours/theirs, latency theirs/ours)")
    print()
    print(usage_table(outcomes))
    for o in outcomes:
        for name, prof in o.profiles.items():
            print()
            if name.startswith("strace-"):
                print(f"{o.spec.key} {name} (strace -c -f)\n{prof.rstrip()}")
            elif opts.profile:
                print((opts.profile / f"{o.spec.key}-{name}.txt").read_text().rstrip())

    import hiredis
    import redis as redis_py

    doc: dict[str, Any] = {
        "timestamp": stamp,
        "git": git_info(),
        "aioflow": aioflow.__version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "redis_server": env["redis_version"],
        "appendonly": env["appendonly"],
        "redis_py": redis_py.__version__,
        "hiredis": getattr(hiredis, "__version__", None),
        "uvloop": UVLOOP_VERSION,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "workers": opts.workers,
        "processes": opts.processes,
        "external_redis": bool(opts.redis_urls),
        "redis_nodes": env.get("redis_nodes", 1),
        "redis_cpu_from": env.get("redis_cpu_from"),
        "concurrency": opts.concurrency,
        "scale": opts.scale,
        "repeat": opts.repeat,
        "profiled": bool(opts.profile),
        "other_load_before": round(load, 3),
        "worker_exit_codes": codes,
        "workloads": {
            o.spec.key: {
                "title": o.spec.title,
                "flow": o.spec.flow,
                "count": o.count,
                "seconds": round(o.seconds, 4),
                "value": round(o.value, 4),
                "unit": o.spec.unit,
                "peer": o.spec.peer,
                "peer_label": o.spec.peer_label,
                "vs_peer": round(ratio(o.spec.key, o.value, o.spec.peer), 3),
                "prototype": o.spec.prototype,
                "vs_prototype": round(ratio(o.spec.key, o.value, o.spec.prototype), 3),
                "rounds": [round(v, 4) for v in o.rounds],
                **o.extra,
                "errors": len(o.errors),
                "error_samples": o.errors[:10],
                "usage": o.usage,
                **({"latencies_ms": o.samples} if o.samples else {}),
                **({"profiles": o.profiles} if o.profiles else {}),
            }
            for o in outcomes
        },
    }
    path = write_json(doc, stamp, bool(opts.profile))
    print(f"\nwrote {path.relative_to(ROOT)}" + ("" if opts.profile else " and latest.json"))
    failed = [o for o in outcomes if o.errors]
    for o in failed:
        print(f"{o.spec.key}: {len(o.errors)} errors, e.g. {o.errors[:3]}", file=sys.stderr)
    if bad_exit:
        print(f"worker exit codes {codes}", file=sys.stderr)
    return 1 if failed or bad_exit else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: workers and redis-server stopped", file=sys.stderr)
        sys.exit(130)
