"""What a workload costs: CPU seconds of redis-server, the workers and this process
(``/proc``, ``getrusage``, else ``INFO cpu``), the Redis command statistics (``INFO
commandstats``, ``--script-stats``: SLOWLOG), the load of the machine, and py-spy or
``strace -c`` around a workload (``--profile``, ``--strace``)."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyspy
from procstat import local_redis_pid, proc_cpu, tree_cpu
from redis.asyncio import Redis

from aioflow.app import connect
from aioflow.store.scripts import SCRIPTS

SLOWLOG_MAX = 1_000_000
METER_COMMANDS = ("info", "config", "slowlog", "client")  # the meter's own, left out
MORE_ARGS = re.compile(rb"\.\.\. \((\d+) more arguments\)$")
CLK_TCK = os.sysconf("SC_CLK_TCK")


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
        # Redis 7 runs the flagged (#!lua) scripts, older servers the plain ones
        names = {
            sha.encode(): name
            for shas in (SCRIPTS.sha, SCRIPTS.flagged_sha)
            for name, sha in shas.items()
        }
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
