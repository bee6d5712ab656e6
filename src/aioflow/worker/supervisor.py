"""``aioflow worker APP --processes N``: one supervisor keeping N worker processes.

Each worker process is the plain ``aioflow worker`` command (one event loop, its
own connections). The supervisor restarts a process that exits while it is not
draining, after a backoff that doubles with each quick death and resets once a
process has lived a while. SIGTERM or SIGINT is passed on to every process; the
supervisor then waits for all of them to drain and exits 0 if every one did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aioflow.core.errors import ConfigError

log = logging.getLogger("aioflow.supervisor")


def parse_processes(value: str) -> int:
    """``N`` (>= 1) or ``auto`` (the CPU count); raises ConfigError otherwise."""
    if value == "auto":
        return max(1, os.cpu_count() or 1)
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--processes takes a number >= 1 or 'auto', got {value!r}")
    return n


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` with ``option VALUE`` / ``option=VALUE`` left out."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


@dataclass(frozen=True)
class Backoff:
    """Delay before restarting a process: ``first``, doubled for each death within
    ``healthy_after`` seconds of its start, at most ``cap``."""

    first: float = 0.5
    cap: float = 30.0
    healthy_after: float = 10.0

    def delay(self, quick_deaths: int) -> float:
        return float(min(self.cap, self.first * 2.0 ** max(0, quick_deaths - 1)))


class Supervisor:
    """Runs ``command`` ``processes`` times over (see the module docstring)."""

    def __init__(
        self, command: Sequence[str], processes: int, *, backoff: Backoff | None = None
    ) -> None:
        self.command = list(command)
        self.processes = processes
        self.backoff = backoff or Backoff()
        self.children: dict[int, asyncio.subprocess.Process] = {}
        self.exit_codes: dict[int, int | None] = {}
        self._stopping = asyncio.Event()
        self._signals: list[int] = []

    def _forward(self, sig: int) -> None:
        if not self._stopping.is_set():
            log.info("signal %d: draining %d worker process(es)", sig, len(self.children))
        self._stopping.set()
        self._signals.append(sig)
        for proc in list(self.children.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    async def _keep(self, slot: int) -> None:
        quick = 0
        while not self._stopping.is_set():
            proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.DEVNULL
            )
            self.children[slot] = proc
            if self._signals:  # a signal came while it was being started
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(self._signals[-1])
            log.info("worker process %d started (pid %d)", slot, proc.pid)
            started = time.monotonic()
            code = await proc.wait()
            del self.children[slot]
            self.exit_codes[slot] = code
            if self._stopping.is_set():
                log.info("worker process %d (pid %d) exited with %d", slot, proc.pid, code)
                return
            lived = time.monotonic() - started
            quick = quick + 1 if lived < self.backoff.healthy_after else 1
            delay = self.backoff.delay(quick)
            log.warning(
                "worker process %d (pid %d) exited with %d after %.1fs; restarting in %.1fs",
                slot,
                proc.pid,
                code,
                lived,
                delay,
            )
            self.exit_codes[slot] = None  # a replacement comes: this death is handled
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()

    async def run(self) -> int:
        """Until a signal and every process has drained; 0 when each exited 0."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._forward, sig)
        log.info("supervising %d worker processes (pid %d)", self.processes, os.getpid())
        try:
            await asyncio.gather(*(self._keep(i) for i in range(self.processes)))
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            for proc in self.children.values():  # only on an error of our own
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        bad = {i: c for i, c in self.exit_codes.items() if c not in (0, None)}
        if bad:
            log.error("worker processes did not drain cleanly: exit codes %s", bad)
            return 1
        return 0


def worker_command(argv: Sequence[str]) -> list[str]:
    """The command line of one worker process: this one without ``--processes``."""
    return [sys.executable, "-m", "aioflow", *without_option(argv, "--processes")]
