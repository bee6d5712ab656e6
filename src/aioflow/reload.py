"""``aioflow dev --reload``: run ``aioflow dev`` in a child process, restart it when a
Python file changes. The embedded Redis (if any) lives in this parent, so runs and
the Redis URL survive restarts."""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import ConfigError
from .redis_server import RedisServer, free_port

log = logging.getLogger("aioflow.reload")


def _child_argv(argv: Sequence[str], redis_url: str | None) -> list[str]:
    args = [a for a in argv if a != "--reload"]
    if redis_url is not None:
        args += ["--redis-url", redis_url]
    return [sys.executable, "-m", "aioflow", *args]


def run_reloading(
    argv: Sequence[str], *, app_spec: str, redis_url: str | None, data_dir: str
) -> int:
    """Run ``aioflow dev`` (``argv`` without ``--reload``) until Ctrl-C, restarting it
    on changes to ``*.py`` files under the working directory and the app's own
    directory. Raises ConfigError when watchfiles is not installed."""
    try:
        import watchfiles
    except ImportError:
        raise ConfigError(
            "aioflow dev --reload needs watchfiles: pip install 'aioflow[reload]'"
        ) from None
    server: RedisServer | None = None
    if not redis_url:
        server = RedisServer(dir=Path(data_dir) / "redis", port=free_port(), appendonly=True)
        server.start()
        (Path(data_dir) / "redis.url").write_text(server.url + "\n")
        log.info("started redis-server %s (kept across reloads)", server.url)
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
