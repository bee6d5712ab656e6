"""Redis Cluster against a single Redis, and scale-out over 1, 2 and 3 masters.

Every configuration is one ``run.py`` pass (fresh workers, warm-up, metered
rounds) against a Redis this script starts on loopback: a single
``redis-server``, then local clusters of 1..N masters (no replicas, no AOF),
all in one run so the figures compare. Redis CPU is metered on every node
(``/proc``) and reported per vertex in all and per master.

Usage: python benchmarks/cluster.py [--masters 1,2,3] [--processes 1]
       [--only W1,W2,W3,W4] [--scale 0.5] [--repeat 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import run  # noqa: E402

from aioflow.redis_cluster import LocalCluster  # noqa: E402
from aioflow.redis_server import RedisServer  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="aioflow on a single Redis and on clusters")
    p.add_argument("--masters", default="3", help="cluster sizes to run, e.g. 1,2,3")
    p.add_argument("--processes", default="1", help="worker processes, e.g. 1,2")
    p.add_argument("--only", default="W1,W2,W3,W4")
    p.add_argument("--scale", default="0.5")
    p.add_argument("--repeat", default="1")
    a = p.parse_args(argv)
    sizes = [int(n) for n in a.masters.split(",") if n.strip()]
    procs = [int(n) for n in a.processes.split(",") if n.strip()]
    common = ["--only", a.only, "--scale", a.scale, "--repeat", a.repeat]
    results: dict[str, run.Suite] = {}
    with tempfile.TemporaryDirectory(prefix="aioflow-bench-") as tmp:
        for n in procs:
            with RedisServer(dir=Path(tmp) / f"single-{n}", appendonly=False) as server:
                label = f"single, {n} proc"
                print(f"== {label}", flush=True)
                opts = [*common, "--processes", str(n), "--redis-url", server.url]
                results[label] = run.collect(run.parse_args(opts))
            for m in sizes:
                with LocalCluster(Path(tmp) / f"c{m}-{n}", masters=m, replicas=0) as cluster:
                    label = f"cluster {m}M, {n} proc"
                    print(f"== {label}", flush=True)
                    urls = ",".join(cluster.urls)
                    opts = [*common, "--processes", str(n), "--redis-url", urls]
                    results[label] = run.collect(run.parse_args(opts))
    print()
    for label, suite in results.items():
        print(f"-- {label}")
        print(run.table(suite.outcomes))
        print()
    print(comparison(results))
    doc: dict[str, Any] = {
        "git": run.git_info(),
        "args": list(argv or sys.argv[1:]),
        "runs": {
            label: {
                o.spec.key: {"value": round(o.value, 4), "unit": o.spec.unit, "usage": o.usage}
                for o in suite.outcomes
            }
            for label, suite in results.items()
        },
    }
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    path = run.RESULTS / f"cluster-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(run.ROOT)}")
    return 1 if any(o.errors for s in results.values() for o in s.outcomes) else 0


def comparison(results: dict[str, run.Suite]) -> str:
    """One line per workload and configuration: the figure, its ratio to the single
    Redis with as many worker processes, and CPU us per vertex (client, worker, Redis
    in all, then each master's share)."""
    lines = []
    for label, suite in results.items():
        base_label = "single, " + label.split(", ")[1]
        base = results[base_label]
        for o in suite.outcomes:
            b = next(x for x in base.outcomes if x.spec.key == o.spec.key)
            u = o.usage
            per = " ".join(f"{u[f'{k}_us_per_vertex']:.0f}" for k in ("client", "worker", "redis"))
            nodes = "/".join(f"{c:.0f}" for c in u.get("redis_us_per_vertex_by_node", ()))
            lines.append(
                f"{label:<20} {o.spec.key:<4} {run.fmt_value(o.spec.key, o.value):>14} "
                f"{run.ratio(o.spec.key, o.value, b.value):>6.2f}x of single  us/vertex {per}"
                f"  (Redis by master {nodes})"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
