"""The aioflow benchmark driver behind ``benchmarks/run.py`` (``make bench``).

- :mod:`bench.workloads`: what W1-W6 are (sizes, flows, peer figures) and the drivers
  that submit and await their runs;
- :mod:`bench.metering`: CPU of redis-server, the workers and the client (``/proc``,
  ``getrusage``, ``INFO``), Redis command statistics, py-spy and strace around a workload;
- :mod:`bench.processes`: the worker processes (start, stop, wait until they read);
- :mod:`bench.suite`: one pass: redis-server and workers up, every workload metered,
  everything stopped;
- :mod:`bench.report`: the printed tables, the ratios against the peers, the JSON;
- :mod:`bench.cli`: the command line (``main``).

The package expects ``benchmarks/`` on ``sys.path`` (``run.py`` puts it there), as it
imports ``bench_app``, ``procstat`` and ``pyspy`` from it.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
ROOT = HERE.parent
RESULTS = HERE / "results"
