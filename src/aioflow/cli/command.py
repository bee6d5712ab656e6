"""The ``aioflow`` command: parse arguments, load ``module:app``, run, return an exit code.

``serve``, ``worker`` and ``dev`` live here; the one-shot client commands in
:mod:`aioflow.cli.oneshot`. Usage and environment errors (a bad URL, a busy port,
an app that does not import) exit 2 with one line on stderr; ``--log-level
DEBUG`` adds the traceback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from aioflow.core import codec
from aioflow.core.errors import AioflowError, ConfigError, InvalidInput
from aioflow.definitions.app import App
from aioflow.engine.engine import Engine
from aioflow.gateway.routes import create_app
from aioflow.store.connect import connect
from aioflow.store.outage import REDIS_ERRORS
from aioflow.store.redis_cluster import LocalCluster
from aioflow.store.redis_server import DirLock, DirLocked, RedisServer, free_port, stop_orphan
from aioflow.worker.supervisor import Supervisor, parse_processes, worker_command
from aioflow.worker.worker import Worker

from . import logs, oneshot

log = logging.getLogger("aioflow")


def load_app(spec: str) -> App:
    """Import ``module:attr`` or ``path/to/file.py:attr`` (``attr`` defaults to ``app``).

    Raises ConfigError when the file or module cannot be found or imported, or
    ``attr`` is not an :class:`App`; an error raised by the module's own code
    while it is imported propagates as it is."""
    target, _, attr = spec.partition(":")
    attr = attr or "app"
    try:
        if target.endswith(".py") or os.sep in target:
            path = Path(target).resolve()
            if not path.exists():
                raise ConfigError(f"no such file: {target}")
            sys.path.insert(0, str(path.parent))
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            if mod_spec is None or mod_spec.loader is None:
                raise ConfigError(f"cannot import {target}")
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[path.stem] = module
            mod_spec.loader.exec_module(module)
        else:
            sys.path.insert(0, os.getcwd())
            module = importlib.import_module(target)
    except ImportError as e:
        raise ConfigError(f"cannot import {target}: {e}") from e
    if not hasattr(module, attr):
        raise ConfigError(f"{target} has no attribute {attr!r}")
    app = getattr(module, attr)
    if not isinstance(app, App):
        raise ConfigError(f"{spec}: expected an aioflow.App, got {type(app).__name__}")
    return app


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aioflow", description="asyncio workflow engine on Redis")
    p.add_argument(
        "--log-level",
        default=os.environ.get("AIOFLOW_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING, ERROR (default: AIOFLOW_LOG_LEVEL, then INFO); "
        "DEBUG also prints the traceback of an error",
    )
    p.add_argument(
        "--log-format",
        default=os.environ.get("AIOFLOW_LOG_FORMAT", "text"),
        help="text, or json: one JSON object per line (default: AIOFLOW_LOG_FORMAT, then text)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("app", help="module:app or path/to/file.py:app")
        oneshot.add_url(sp, gateway=False, default="the app's redis_url, AIOFLOW_REDIS_URL")

    def web_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--host", default=None)
        sp.add_argument("--port", type=int, default=None)

    def worker_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--concurrency", type=int, default=None)
        sp.add_argument("--grace", type=float, default=None)
        sp.add_argument("--visibility-timeout", type=float, default=None)
        sp.add_argument(
            "--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port"
        )

    sp = sub.add_parser("serve", help="run the HTTP gateway")
    common(sp)
    web_opts(sp)
    sp = sub.add_parser("worker", help="run a worker")
    common(sp)
    worker_opts(sp)
    sp.add_argument(
        "--health",
        action="store_true",
        help="check (exit 0/1) that Redis answers and a worker on this host read recently",
    )
    sp.add_argument(
        "--processes",
        default="1",
        help="worker processes under one supervisor: N, or auto for the CPU count (default 1)",
    )
    sp = sub.add_parser("dev", help="gateway + worker in one process, own Redis if no URL")
    common(sp)
    web_opts(sp)
    worker_opts(sp)
    sp.add_argument("--data-dir", default=".aioflow", help="embedded Redis data (default .aioflow)")
    sp.add_argument(
        "--cluster", type=int, default=None, metavar="N", help="own Redis Cluster of N masters"
    )
    sp.add_argument("--replicas", type=int, default=0, help="replicas per master (--cluster)")
    sp.add_argument("--reload", action="store_true", help="restart on code changes (watchfiles)")
    oneshot.add_parsers(sub)
    return p


def _run(coro_fn: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(coro_fn())
    return uvloop.run(coro_fn())


def _on_signals(on_stop: Callable[[], None]) -> asyncio.Event:
    """An event set (after calling ``on_stop``) by the first SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def handler() -> None:
        on_stop()
        done.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler)
    return done


async def _serve(app: App, *, worker: bool, gateway: bool) -> int:
    """Run the gateway and/or a worker until SIGINT/SIGTERM. Neither needs Redis to
    be up: both log that it is not and keep trying until it answers."""
    s = app.settings
    if not s.redis_url:
        raise ConfigError("no Redis: pass --url or set AIOFLOW_REDIS_URL")
    w: Worker | None = None
    # first of all: a signal during the start-up stops the command, never kills it
    signalled = _on_signals(lambda: w.stop() if w else None)
    redis = connect(s.redis_url, max_connections=max(64, s.concurrency + 16))
    runner: web.AppRunner | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        if gateway:  # first: a busy port ends the command before a worker takes any work
            runner = web.AppRunner(create_app(redis, flows=app.flows, settings=s), access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, s.host, s.port).start()
            except OSError as e:
                raise ConfigError(
                    f"the gateway cannot listen on {s.host}:{s.port}: {e.strerror or e}"
                ) from e
            log.info("gateway on http://%s:%d", s.host, s.port)
        if worker and not signalled.is_set():
            w = Worker(app.flows, redis, settings=s)  # run() waits for Redis with backoff
            tasks.append(asyncio.create_task(w.run()))
        stopped = asyncio.create_task(signalled.wait())
        await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if w is not None:
            w.stop()
        for t in tasks:
            try:
                await t
            except REDIS_ERRORS as e:
                # asked to stop while it still waited for Redis: nothing to drain
                if not signalled.is_set() or isinstance(e, AioflowError):
                    raise
                log.info("stopped before Redis at %s answered", oneshot.shown(s.redis_url))
    finally:
        if runner is not None:
            await runner.cleanup()
        await redis.aclose()
    return 0


async def _health(app: App) -> int:
    """Exit 0 when a worker of this host is healthy (see :mod:`aioflow.worker.health`)."""
    from aioflow.worker.health import probe

    if not app.settings.redis_url:
        raise ConfigError("no Redis: pass --redis-url or set AIOFLOW_REDIS_URL")
    report = await probe(app.settings)
    sys.stdout.write(codec.dumps(report).decode() + "\n")
    return 0 if report["healthy"] else 1


async def _flows(name: str | None, url: str | None) -> int:
    """What ``aioflow flows [NAME] --url URL`` prints."""
    return await oneshot.run(argparse.Namespace(command="flows", name=name, url=url))


def _fail(e: BaseException) -> int:
    """One line on stderr (the traceback first at DEBUG); exit status 2."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        traceback.print_exception(e, file=sys.stderr)
    sys.stderr.write(f"aioflow: {e}\n")
    if isinstance(e, InvalidInput):  # what is wrong, one line each (as the 422 lists it)
        for err in e.errors[:50]:
            where = ".".join(str(p) for p in err.get("loc", ())) or "(input)"
            sys.stderr.write(f"  {where}: {err.get('msg', err)}\n")
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)  # a usage error exits 2 here
    try:
        logs.configure(args.log_level, args.log_format)
        return _main(args, argv)
    except AioflowError as e:
        return _fail(e)
    except OSError as e:  # the environment: a busy port, a file that cannot be read...
        return _fail(e)
    except KeyboardInterrupt:
        return 0


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    if args.command in oneshot.COMMANDS:
        return _run(lambda: oneshot.run(args))
    app = load_app(args.app)
    overrides = {
        k: getattr(args, k, None)
        for k in ("host", "port", "concurrency", "grace", "visibility_timeout", "metrics_port")
    }
    app.settings = app.settings.replace(redis_url=args.url, **overrides)
    if app.settings.redis_url:
        oneshot.check_url(app.settings.redis_url, gateway=False, command=f"aioflow {args.command}")
    if args.command == "serve":
        return _run(lambda: _serve(app, worker=False, gateway=True))
    if args.command == "worker":
        if args.health:
            return _run(lambda: _health(app))
        processes = parse_processes(args.processes)
        if processes > 1:
            sup = Supervisor(worker_command(argv), processes)
            return _run(sup.run)
        return _run(lambda: _serve(app, worker=True, gateway=False))
    if args.reload:
        if args.cluster:
            raise ConfigError(
                "--reload does not start a cluster: run `aioflow dev --cluster N` once "
                "and pass its URL with --url"
            )
        from .reload import run_reloading

        return run_reloading(
            argv,
            app_spec=args.app,
            redis_url=app.settings.redis_url,
            own_redis=lambda: _own_redis(args.data_dir),
        )
    return _dev(app, args.data_dir, cluster=args.cluster, replicas=args.replicas)


class OwnRedis:
    """``aioflow dev``'s own Redis (one server or a cluster) and the lock on its data
    directory, held until :meth:`stop`."""

    def __init__(self, server: RedisServer | LocalCluster, lock: DirLock) -> None:
        self.server = server
        self.lock = lock

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        try:
            self.server.stop()
        finally:
            self.lock.release()


def _servers(own: RedisServer | LocalCluster) -> list[RedisServer]:
    return own.nodes if isinstance(own, LocalCluster) else [own]


def _lock_data_dir(data_dir: Path) -> DirLock:
    """Take ``data_dir``'s lock, or ConfigError naming the ``aioflow dev`` that holds it.
    A lock left by a dev that died (SIGKILL) is taken over, and the redis-servers it
    left running on that data are stopped first."""
    lock = DirLock(data_dir / "dev.lock")
    try:
        previous = lock.acquire()
    except DirLocked as e:
        pid, url = e.note.get("pid", "?"), e.note.get("url")
        where = f"its Redis is {url}" if url else "it is still starting its Redis"
        hint = f"; pass --url {url} to use its Redis" if url else ""
        raise ConfigError(
            f"aioflow dev is already running in {data_dir} (pid {pid}; {where}): "
            f"stop it or pass another --data-dir{hint}"
        ) from None
    try:
        lock.write(pid=os.getpid())
        for server_pid, port in previous.get("servers", []):
            if stop_orphan(int(server_pid), int(port)):
                log.warning(
                    "stopped redis-server pid %s (port %s), left running on %s by aioflow dev "
                    "pid %s, which is gone",
                    server_pid,
                    port,
                    data_dir,
                    previous.get("pid", "?"),
                )
    except BaseException:
        lock.release()
        raise
    return lock


def _own_redis(data_dir: str, *, cluster: int | None = None, replicas: int = 0) -> OwnRedis:
    """Start ``aioflow dev``'s own Redis with its data under ``data_dir`` (AOF on): one
    redis-server, or a Redis Cluster of ``cluster`` masters with ``replicas`` replicas
    each; write its URL to ``<data_dir>/redis.url`` for clients in other processes.
    Holds ``<data_dir>/dev.lock`` until stopped: a second dev on the same data refuses
    (ConfigError naming the first), while one left by a killed dev is taken over."""
    root = Path(data_dir)
    lock = _lock_data_dir(root)
    own: RedisServer | LocalCluster
    try:
        if cluster is not None:
            own = LocalCluster(
                root / "cluster", masters=cluster, replicas=replicas, appendonly=True
            )
            own.start()
            log.info("started a Redis Cluster in %s: %s", own.dir, " ".join(own.urls))
        else:
            own = RedisServer(dir=root / "redis", port=free_port(), appendonly=True)
            own.start()
            log.info("started redis-server %s (data in %s)", own.url, own.dir)
    except BaseException:
        lock.release()
        raise
    running = OwnRedis(own, lock)
    try:
        servers = [[s.pid, s.port] for s in _servers(own)]
        lock.write(pid=os.getpid(), url=own.url, servers=servers)
        # so that clients in other processes can find it
        (root / "redis.url").write_text(own.url + "\n")
    except BaseException:
        running.stop()
        raise
    return running


def _dev(app: App, data_dir: str, *, cluster: int | None = None, replicas: int = 0) -> int:
    own: OwnRedis | None = None
    if cluster is None and replicas:
        raise ConfigError("--replicas needs --cluster N")
    if cluster is not None and app.settings.redis_url:
        raise ConfigError(
            "--cluster starts its own Redis Cluster: drop --url (--redis-url) / AIOFLOW_REDIS_URL"
        )
    if not os.environ.get("AIOFLOW_EXPOSE_TRACEBACKS"):  # dev shows tracebacks unless told not to
        app.settings = app.settings.replace(expose_tracebacks=True)
    if not app.settings.redis_url:
        own = _own_redis(data_dir, cluster=cluster, replicas=replicas)
        app.settings = app.settings.replace(redis_url=own.url)
    try:
        return _run(lambda: _serve(app, worker=True, gateway=True))
    finally:
        if own is not None:
            with contextlib.suppress(Exception):
                own.stop()


__all__ = ["Engine", "load_app", "main"]
