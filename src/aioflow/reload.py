"""``aioflow dev --reload``: run ``aioflow dev`` in a child process, restart it when a
Python file changes. The embedded Redis (if any) lives in this parent, so runs and
the Redis URL survive restarts."""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

log = logging.getLogger("aioflow.reload")


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
    cmd = shlex.join(_child_argv(argv, server.url if server else None))

    def changed(changes: set[tuple[watchfiles.Change, str]]) -> None:
        log.info("reloading: %s changed", ", ".join(sorted({p for _, p in changes})))

    try:
        watchfiles.run_process(
            *sorted(paths),
            target=cmd,
            target_type="command",
            callback=changed,
            watch_filter=watchfiles.PythonFilter(),
            debounce=300,
        )
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()
    return 0
