"""The command line of ``benchmarks/run.py``: flags parsed, one pass run, its report
printed and written."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import ROOT
from .report import print_report, result_doc, write_json
from .suite import Options, collect
from .workloads import SPECS


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(description="aioflow benchmarks (W1-W6)")
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


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    suite = collect(opts)
    bad_exit = [c for c in suite.codes if c != 0]
    print()
    print_report(opts, suite)
    path = write_json(result_doc(opts, suite), suite.stamp, bool(opts.profile))
    print(f"\nwrote {path.relative_to(ROOT)}" + ("" if opts.profile else " and latest.json"))
    failed = [o for o in suite.outcomes if o.errors]
    for o in failed:
        print(f"{o.spec.key}: {len(o.errors)} errors, e.g. {o.errors[:3]}", file=sys.stderr)
    if bad_exit:
        print(f"worker exit codes {suite.codes}", file=sys.stderr)
    return 1 if failed or bad_exit else 0
