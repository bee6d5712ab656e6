"""Redis Cluster against a single Redis, and scale-out over 1, 2 and 3 masters.

Every configuration is one ``run.py`` pass (fresh workers, warm-up, metered
rounds) against a Redis this script starts on loopback: a single
``redis-server``, then local clusters of 1..N masters (no replicas, no AOF),
all in one run so the figures compare. Redis CPU is metered on every node
(``/proc``) and reported per vertex in all and per master. ``--rounds N``
runs every configuration N times, interleaved, and reports the median of the
per-round ratios (a shared box's load drifts between passes).

Usage: python benchmarks/cluster.py [--masters 1,2,3] [--processes 1]
       [--only W1,W2,W3,W4] [--scale 0.5] [--repeat 1] [--rounds 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import run  # noqa: E402

from aioflow.redis_cluster import LocalCluster  # noqa: E402
from aioflow.store.redis_server import RedisServer  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="aioflow on a single Redis and on clusters")
    p.add_argument("--masters", default="3", help="cluster sizes to run, e.g. 1,2,3")
    p.add_argument("--processes", default="1", help="worker processes, e.g. 1,2")
    p.add_argument("--only", default="W1,W2,W3,W4")
    p.add_argument("--scale", default="0.5")
    p.add_argument("--repeat", default="1", help="rounds of each workload within a pass")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="passes over all configurations, interleaved (single, cluster, single, ...): "
        "the box's load drifts, so each cluster pass is compared with the single pass "
        "next to it and the median of those ratios is reported",
    )
    a = p.parse_args(argv)
    sizes = [int(n) for n in a.masters.split(",") if n.strip()]
    procs = [int(n) for n in a.processes.split(",") if n.strip()]
    common = ["--only", a.only, "--scale", a.scale, "--repeat", a.repeat]
    rounds: list[dict[str, run.Suite]] = []
    with tempfile.TemporaryDirectory(prefix="aioflow-bench-") as tmp, ExitStack() as stack:
        configs: list[tuple[str, int, str]] = []  # label, processes, URLs
        single = stack.enter_context(RedisServer(dir=Path(tmp) / "single", appendonly=False))
        clusters = {
            m: stack.enter_context(LocalCluster(Path(tmp) / f"c{m}", masters=m, replicas=0))
            for m in sizes
        }
        for n in procs:
            configs.append((f"single, {n} proc", n, single.url))
            for m, cluster in clusters.items():
                configs.append((f"cluster {m}M, {n} proc", n, ",".join(cluster.urls)))
        for r in range(a.rounds):
            results: dict[str, run.Suite] = {}
            for label, n, urls in configs:
                print(f"== round {r + 1}: {label}", flush=True)
                opts = [*common, "--processes", str(n), "--redis-url", urls]
                results[label] = run.collect(run.parse_args(opts))
            rounds.append(results)
    print()
    for label, suite in rounds[-1].items():
        print(f"-- {label} (round {len(rounds)})")
        print(run.table(suite.outcomes))
        print()
    for r, results in enumerate(rounds):
        print(f"round {r + 1}")
        print(comparison(results))
    if len(rounds) > 1:
        print()
        print(summary(rounds))
    doc: dict[str, Any] = {
        "git": run.git_info(),
        "args": list(argv or sys.argv[1:]),
        "rounds": [
            {
                label: {
                    o.spec.key: {"value": round(o.value, 4), "unit": o.spec.unit, "usage": o.usage}
                    for o in suite.outcomes
                }
                for label, suite in results.items()
            }
            for results in rounds
        ],
    }
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    path = run.RESULTS / f"cluster-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(run.ROOT)}")
    failed = any(o.errors for res in rounds for s in res.values() for o in s.outcomes)
    return 1 if failed else 0


def _base(label: str) -> str:
    return "single, " + label.split(", ")[1]


def summary(rounds: list[dict[str, run.Suite]]) -> str:
    """Per configuration and workload: the median, lowest and highest of the
    per-round ratios to the single Redis of the same round."""
    lines = ["ratio to single, median of the rounds (lowest-highest)"]
    for label in rounds[0]:
        if label == _base(label):
            continue
        for o in rounds[0][label].outcomes:
            key = o.spec.key
            ratios = sorted(
                run.ratio(key, _value(res[label], key), _value(res[_base(label)], key))
                for res in rounds
            )
            lines.append(
                f"{label:<20} {key:<4} {statistics.median(ratios):.2f}x "
                f"({ratios[0]:.2f}-{ratios[-1]:.2f})"
            )
    return "\n".join(lines)


def _value(suite: run.Suite, key: str) -> float:
    return next(o.value for o in suite.outcomes if o.spec.key == key)


def comparison(results: dict[str, run.Suite]) -> str:
    """One line per workload and configuration: the figure, its ratio to the single
    Redis with as many worker processes, and CPU us per vertex (client, worker, Redis
    in all, then each master's share)."""
    lines = []
    for label, suite in results.items():
        base = results[_base(label)]
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
