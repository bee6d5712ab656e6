"""``aioflow dev --reload``: run ``aioflow dev`` in a child process, restart it when a
Python file changes. The embedded Redis (if any) lives in this parent, so runs and
the Redis URL survive restarts."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aioflow.core.errors import ConfigError

log = logging.getLogger("aioflow.reload")


class _Child:
    """The ``aioflow dev`` child process, restarted on changes. Kept here rather
    than by watchfiles.run_process, which lost track of the new child when a Ctrl-C
    landed while it restarted one: here a stop interrupted half-way is finished by
    the next one. (Signals are not blocked around the start: a child would inherit
    the blocked mask across exec and never see its SIGINT.)"""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGINT (it drains), SIGKILL after ``timeout``; idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("aioflow dev did not stop within %g s: killing it", timeout)
                proc.kill()
                proc.wait()
        self.proc = None  # (only now: an interrupted stop is finished by the next)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the reloader as Ctrl-C does


def _child_argv(argv: Sequence[str], redis_url: str | None) -> list[str]:
    args = [a for a in argv if a != "--reload"]
    if redis_url is not None:
        args += ["--redis-url", redis_url]
    return [sys.executable, "-m", "aioflow", *args]


def run_reloading(
    argv: Sequence[str], *, app_spec: str, redis_url: str | None, own_redis: Callable[[], Any]
) -> int:
    """Run ``aioflow dev`` (``argv`` without ``--reload``) until Ctrl-C, restarting it
    on changes to ``*.py`` files under the working directory and the app's own
    directory. Without ``redis_url``, ``own_redis()`` starts the Redis (an object with
    ``url`` and ``stop()``) that every restart uses. Raises ConfigError when
    watchfiles is not installed."""
    try:
        import watchfiles
    except ImportError:
        raise ConfigError(
            "aioflow dev --reload needs watchfiles: pip install 'aioflow[reload]'"
        ) from None
    server = None if redis_url else own_redis()
    paths = {Path.cwd()}
    target = app_spec.partition(":")[0]
    if target.endswith(".py"):
        app_dir = Path(target).resolve().parent
        if not app_dir.is_relative_to(Path.cwd()):
            paths.add(app_dir)
    cmd = _child_argv(argv, server.url if server else None)
    child = _Child(cmd)
    # SIGINT and SIGTERM stop the reloader (and its child), as they stop a plain
    # `aioflow dev`, even where it started with SIGINT ignored (a background job of a
    # non-interactive shell, nohup), which Python would otherwise keep
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        child.start()
        # raise_interrupt=False: Ctrl-C ends the loop (and a Ctrl-C that lands while a
        # restart is under way raises there); either way the current child is stopped
        for changes in watchfiles.watch(
            *sorted(paths),
            watch_filter=watchfiles.PythonFilter(),
            debounce=300,
            raise_interrupt=False,
        ):
            log.info("reloading: %s changed", ", ".join(sorted({p for _, p in changes})))
            child.stop()
            child.start()
    except KeyboardInterrupt:
        pass
    finally:
        child.stop()
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()
    return 0
