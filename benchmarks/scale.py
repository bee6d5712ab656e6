"""Scaling: the same workloads with 1, 2, ... worker processes, against a given Redis.

Each process count is one full ``run.py`` pass (workers started fresh under
``aioflow worker --processes N``, warm-up, metered rounds); the table compares
throughput and CPU per vertex across the counts. ``--redis-url`` takes one URL
or a comma-separated list (the nodes of a Redis Cluster, say): every node listed
is metered (CPU from /proc when it runs on this machine, else ``INFO cpu``;
commands and round trips summed over all), and workers and client connect to the
first. Without it a redis-server is started as ``run.py`` does.

Usage: python benchmarks/scale.py [--redis-url URL[,URL...]] [--processes 1,2]
       [--only W1,W2,W3,W4,W5] [--scale 1] [--repeat 1] [--concurrency 100]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import run  # noqa: E402


def parse(argv: Sequence[str] | None) -> tuple[list[int], list[str]]:
    p = argparse.ArgumentParser(description="aioflow W1-W5 with 1..N worker processes")
    p.add_argument("--processes", default="1,2", help="process counts to compare (1,2)")
    p.add_argument("--redis-url", default="", help="Redis URL(s), comma-separated")
    p.add_argument("--only", default="W1,W2,W3,W4,W5")
    p.add_argument("--scale", default="1")
    p.add_argument("--repeat", default="1")
    p.add_argument("--concurrency", default="100")
    a = p.parse_args(argv)
    try:
        counts = [int(n) for n in a.processes.split(",") if n.strip()]
    except ValueError:
        p.error("--processes takes comma-separated numbers, e.g. 1,2")
    if not counts or min(counts) < 1:
        p.error("--processes takes numbers >= 1")
    common = ["--only", a.only, "--scale", a.scale, "--repeat", a.repeat]
    common += ["--concurrency", a.concurrency]
    if a.redis_url:
        common += ["--redis-url", a.redis_url]
    return counts, common


def comparison(counts: list[int], suites: list[run.Suite]) -> str:
    head = ["workload"]
    for n in counts:
        head += [f"N={n}", f"us/vertex N={n} (client worker redis)"]
    head.append(f"N={counts[-1]} vs N={counts[0]}")
    rows = [head]
    keys = [o.spec.key for o in suites[0].outcomes]
    for key in keys:
        row = [key]
        values = []
        for suite in suites:
            o = next(o for o in suite.outcomes if o.spec.key == key)
            values.append(o.value)
            u = o.usage
            per = " ".join(f"{u[f'{k}_us_per_vertex']:.0f}" for k in ("client", "worker", "redis"))
            row += [run.fmt_value(key, o.value), per]
        row.append(f"{run.ratio(key, values[-1], values[0]):.2f}x")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for j, r in enumerate(rows):
        cells = [
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    counts, common = parse(argv)
    suites: list[run.Suite] = []
    for n in counts:
        print(f"== {n} worker process(es)", flush=True)
        suites.append(run.collect(run.parse_args([*common, "--processes", str(n)])))
    print()
    for n, suite in zip(counts, suites, strict=True):
        print(f"-- {n} worker process(es)")
        print(run.table(suite.outcomes))
        print()
    print(comparison(counts, suites))
    doc: dict[str, Any] = {
        "git": run.git_info(),
        "args": common,
        "runs": {
            str(n): {
                o.spec.key: {"value": round(o.value, 4), "unit": o.spec.unit, "usage": o.usage}
                for o in suite.outcomes
            }
            for n, suite in zip(counts, suites, strict=True)
        },
    }
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    path = run.RESULTS / f"scale-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(run.ROOT)}")
    failed = [o for s in suites for o in s.outcomes if o.errors]
    bad_exit = [c for s in suites for c in s.codes if c != 0]
    return 1 if failed or bad_exit else 0


if __name__ == "__main__":
    sys.exit(main())
