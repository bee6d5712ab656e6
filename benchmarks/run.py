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

The code is in the ``bench`` package next to this script (workloads, metering,
processes, suite, report, cli); this script only puts ``benchmarks/`` on the path
and calls :func:`bench.cli.main`. The names ``cluster.py``, ``scale.py`` and
``client_cost.py`` use as ``run.X`` are re-exported here.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench import RESULTS, ROOT  # noqa: E402
from bench.cli import main, parse_args  # noqa: E402
from bench.metering import Node  # noqa: E402
from bench.report import fmt_value, git_info, ratio, table  # noqa: E402
from bench.suite import Suite, collect  # noqa: E402

__all__ = [
    "RESULTS",
    "ROOT",
    "Node",
    "Suite",
    "collect",
    "fmt_value",
    "git_info",
    "main",
    "parse_args",
    "ratio",
    "table",
]

if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: workers and redis-server stopped", file=sys.stderr)
        sys.exit(130)
