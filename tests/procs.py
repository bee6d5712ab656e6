"""Subprocesses of a test (aioflow commands), their output kept in files."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without AIOFLOW_* / OTEL_* variables, plus ``extra``;
    the repository is on PYTHONPATH (``tests.apps.*``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIOFLOW_", "OTEL_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


class Procs:
    """Starts processes; :meth:`terminate` sends SIGTERM and checks they exit 0."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def aioflow(self, name: str, *args: str, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        return self.start(name, [sys.executable, "-m", "aioflow", *args], env)

    def output(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")[-4000:]

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            assert p.poll() is None, f"{name} exited {p.returncode}:\n{self.output(name)}"

    def terminate(self, names: Sequence[str] | None = None, timeout: float = 20.0) -> None:
        chosen = {n: p for n, p in self.procs.items() if names is None or n in names}
        for p in chosen.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in chosen.items():
            try:
                code = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{name} ignored SIGTERM:\n{self.output(name)}") from None
            assert code == 0, f"{name} exited {code}:\n{self.output(name)}"

    def kill_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGCONT)  # a test may have stopped it
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
