"""What a pass measured, told: the table against the peers, the CPU and Redis command
table, the profiles, and the JSON written to ``benchmarks/results/``."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

import aioflow

from . import RESULTS, ROOT
from .suite import Options, Suite
from .workloads import PEER_CPU_US, SPECS, Outcome

UVLOOP_VERSION: str = getattr(uvloop, "__version__", "?")


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
        if s.key == "W6":
            for phase, label in (("idle", "one at a time"), ("burst", "in the burst")):
                for q in ("p50", "p99"):
                    ms = o.extra[f"{phase}_resume_{q}_ms"]
                    rows.append((f"W6 send to resume {q}, {label}", f"{ms:.3f} ms", *[""] * 10))
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


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def print_report(opts: Options, suite: Suite) -> None:
    """The tables of one pass, and the profiles it took (``--profile``, ``--strace``)."""
    env, outcomes = suite.env, suite.outcomes
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


def workload_doc(o: Outcome) -> dict[str, Any]:
    """One workload's entry in the JSON."""
    return {
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


def result_doc(opts: Options, suite: Suite) -> dict[str, Any]:
    """The JSON of one pass: the setup (versions, machine, flags) and every workload."""
    import hiredis
    import redis as redis_py

    env = suite.env
    return {
        "timestamp": suite.stamp,
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
        "other_load_before": round(suite.load, 3),
        "worker_exit_codes": suite.codes,
        "workloads": {o.spec.key: workload_doc(o) for o in suite.outcomes},
    }
