"""Sample a process with py-spy while a workload runs, and summarise the samples.

Used by ``run.py --profile DIR`` (py-spy is not a dependency of aioflow: install it
into the venv with ``.venv/bin/pip install py-spy``). Each recording is a raw
("collapsed stacks") file: one line per distinct stack, ``frame;frame;... count``,
each frame ``function (file)``. py-spy skips idle samples (a thread waiting in
epoll), so the sample count over ``rate x seconds`` is the share of time the
process was busy.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def find_pyspy() -> str | None:
    """py-spy next to the running interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


class Recorder:
    """``py-spy record --pid PID --format raw`` until :meth:`stop`."""

    def __init__(
        self, pyspy: str, pid: int, out: Path, *, rate: int = 250, native: bool = False
    ) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.log = out.with_suffix(".log")
        self._logf = open(self.log, "wb")  # closed in stop()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                pyspy,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--nolineno",
                # --native needs the target paused while its stack is read
                "--native" if native else "--nonblocking",
                "--rate",
                str(rate),
                "-o",
                str(out),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
        )
        self._wait_attached()

    def _wait_attached(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while b"Sampling process" not in self.log.read_bytes():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"py-spy exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"py-spy did not attach to {self.pid} within {timeout}s")
            time.sleep(0.01)
        self.started = time.perf_counter()

    def stop(self) -> float:
        """Stop sampling (SIGINT makes py-spy write its file); answers the seconds sampled."""
        seconds = time.perf_counter() - self.started
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return seconds


def _short(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py)`` -> ``func (pkg/mod.py)``."""
    name, _, path = frame.rpartition(" (")
    path = path.rstrip(")")
    for marker in ("site-packages/", "/src/", "/lib/python3.11/", "/benchmarks/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def _package(frame: str) -> str:
    path = frame.rpartition(" (")[2].rstrip(")")
    if path.startswith("aioflow/"):
        return "aioflow"
    if path.startswith("redis/"):
        return "redis-py"
    if path.startswith("asyncio/"):
        return "asyncio (stdlib)"
    if path.startswith("uvloop/"):
        return "uvloop"
    if path.startswith("bench/"):  # the run.py package
        return "benchmark"
    if "/" not in path and path.endswith(".py"):
        return "benchmark" if path in ("run.py", "bench_app.py") else f"stdlib ({path})"
    return path.split("/", 1)[0]


# frames under which everything runs: useless as "total" hotspots
_ROOTS = (
    "(<frozen runpy>)",
    "<module> (",
    "main (aioflow/cli/command.py)",
    "_run (aioflow/cli/command.py)",
    "run (uvloop/__init__.py)",
    "Runner.run (asyncio/runners.py)",
    "main (run.py)",
    "bench (run.py)",
    "main (bench/cli.py)",
    "bench (bench/suite.py)",
    "run.<locals>.wrapper (uvloop/__init__.py)",
)


def _is_root(frame: str) -> bool:
    return any(r in frame for r in _ROOTS)


@dataclass
class Summary:
    """Self ("leaf") and inclusive sample shares per function and per package."""

    samples: int
    seconds: float
    rate: int
    self_pct: list[tuple[str, float]] = field(default_factory=list)
    total_pct: list[tuple[str, float]] = field(default_factory=list)
    aioflow_pct: list[tuple[str, float]] = field(default_factory=list)
    package_pct: list[tuple[str, float]] = field(default_factory=list)

    @property
    def busy(self) -> float:
        """Share of wall time the process had a running (non-idle) thread."""
        want = self.rate * self.seconds
        return self.samples / want if want else 0.0

    def to_json(self, top: int = 25) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "seconds": round(self.seconds, 3),
            "rate": self.rate,
            "busy": round(self.busy, 3),
            "self_pct": [[f, round(p, 2)] for f, p in self.self_pct[:top]],
            "total_pct": [[f, round(p, 2)] for f, p in self.total_pct[:top]],
            "aioflow_total_pct": [[f, round(p, 2)] for f, p in self.aioflow_pct[:top]],
            "package_pct": [[f, round(p, 2)] for f, p in self.package_pct],
        }

    def text(self, title: str, top: int = 15) -> str:
        lines = [
            f"{title}: {self.samples} samples in {self.seconds:.2f}s at {self.rate}/s "
            f"(busy {self.busy:.0%})",
            "  self%  function (leaf frame)",
        ]
        lines += [f"  {p:5.1f}  {f}" for f, p in self.self_pct[:top]]
        lines.append("  total% function (anywhere on the stack; event-loop roots left out)")
        lines += [f"  {p:5.1f}  {f}" for f, p in self.total_pct[:top]]
        lines.append("  total% aioflow function")
        lines += [f"  {p:5.1f}  {f}" for f, p in self.aioflow_pct[:top]]
        lines.append("  self% by package")
        lines += [f"  {p:5.1f}  {f}" for f, p in self.package_pct]
        return "\n".join(lines)


def summarise(raw: Path, seconds: float, rate: int) -> Summary:
    leaf: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    pkg: Counter[str] = Counter()
    total = 0
    if raw.exists():
        for line in raw.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_short(f) for f in stack.split(";") if f]
            if not frames:
                continue
            total += n
            leaf[frames[-1]] += n
            pkg[_package(frames[-1])] += n
            for f in set(frames):
                incl[f] += n
    s = Summary(total, seconds, rate)
    if total:
        s.self_pct = [(f, 100 * n / total) for f, n in leaf.most_common()]
        ranked = [(f, 100 * n / total) for f, n in incl.most_common()]
        s.total_pct = [(f, p) for f, p in ranked if not _is_root(f)]
        s.aioflow_pct = [(f, p) for f, p in s.total_pct if "(aioflow/" in f]
        s.package_pct = [(f, 100 * n / total) for f, n in pkg.most_common()]
    return s
