"""The ``aioflow`` command: parse arguments, load ``module:app``, run, return an exit code."""

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
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from . import cli_client, codec, keys
from .app import App, connect
from .engine import Engine
from .errors import AioflowError, ConfigError
from .gateway import create_app
from .redis_cluster import LocalCluster
from .redis_server import RedisServer, free_port
from .supervisor import Supervisor, parse_processes, worker_command
from .topology import Backend
from .worker import Worker

log = logging.getLogger("aioflow")


def load_app(spec: str) -> App:
    """Import ``module:attr`` or ``path/to/file.py:attr`` (``attr`` defaults to ``app``)."""
    target, _, attr = spec.partition(":")
    attr = attr or "app"
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
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise ConfigError(f"{spec}: expected an aioflow.App, got {type(app).__name__}")
    return app


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aioflow", description="asyncio workflow engine on Redis")
    p.add_argument("--log-level", default=os.environ.get("AIOFLOW_LOG_LEVEL", "INFO"))
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("app", help="module:app or path/to/file.py:app")
        sp.add_argument("--redis-url", default=None, help="default: AIOFLOW_REDIS_URL")

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
    sp = sub.add_parser("run", help="pause, resume or stop a run")
    sp.add_argument("action", choices=["pause", "resume", "stop", "retry", "state"])
    sp.add_argument("run_id")
    sp.add_argument("--redis-url", default=None)
    sp = sub.add_parser("schedule", help="list, pause or resume a flow's schedules")
    sp.add_argument("action", choices=["list", "pause", "resume"])
    sp.add_argument("flow")
    sp.add_argument("name", nargs="?", help="schedule name (pause, resume)")
    sp.add_argument("--redis-url", default=None)
    sp = sub.add_parser("dlq", help="list or replay dead letters")
    sp.add_argument("action", choices=["list", "replay"])
    sp.add_argument("id", nargs="?", help="dead letter id (replay)")
    sp.add_argument("--redis-url", default=None)
    cli_client.add_parsers(sub)
    sp = sub.add_parser("flows", help="list flows and their versions")
    sp.add_argument("name", nargs="?", help="only this flow")
    sp.add_argument("--redis-url", default=None)
    return p


def _run(coro_fn: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(coro_fn())
    return uvloop.run(coro_fn())


async def _until_signal(on_stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def handler() -> None:
        on_stop()
        done.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler)
    await done.wait()


async def _serve(app: App, *, worker: bool, gateway: bool) -> int:
    s = app.settings
    if not s.redis_url:
        raise ConfigError("no Redis: pass --redis-url or set AIOFLOW_REDIS_URL")
    redis = connect(s.redis_url, max_connections=max(64, s.concurrency + 16))
    runner: web.AppRunner | None = None
    w: Worker | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        if worker:
            w = Worker(app.flows, redis, settings=s)  # run() waits for Redis with backoff
            tasks.append(asyncio.create_task(w.run()))
        if gateway:
            runner = web.AppRunner(create_app(redis, flows=app.flows, settings=s), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, s.host, s.port).start()
            log.info("gateway on http://%s:%d", s.host, s.port)
        stopped = asyncio.create_task(_until_signal(lambda: w.stop() if w else None))
        await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if w is not None:
            w.stop()
        for t in tasks:
            await t
        stopped.cancel()
    finally:
        if runner is not None:
            await runner.cleanup()
        await redis.aclose()
    return 0


async def _health(app: App) -> int:
    """Healthy: Redis answers, and a worker of this host sent a heartbeat lately and
    either read from its streams lately or has every slot busy."""
    import socket
    import time

    if not app.settings.redis_url:
        raise ConfigError("no Redis: pass --redis-url or set AIOFLOW_REDIS_URL")
    backend = Backend(connect(app.settings.redis_url))
    report: dict[str, Any] = {"redis": False, "workers": []}
    try:
        await backend.start()
        raw: Any = await backend.redis.hgetall(keys.WORKERS)
        report["redis"] = True
    except Exception as e:
        report["error"] = str(e)
        raw = {}
    finally:
        await backend.aclose()
        await backend.given.aclose()
    now = time.time()
    window = max(30.0, 3 * app.settings.visibility_timeout)
    healthy = False
    for name, doc in raw.items():
        d = codec.loads(doc)
        if d.get("host") != socket.gethostname():
            continue
        reading = now - d["last_read"] < window or d["inflight"] >= app.settings.concurrency
        alive = now - d.get("beat", now) < window
        report["workers"].append({"name": name.decode(), "reading": reading, **d})
        healthy = healthy or (reading and alive)
    report["healthy"] = healthy
    sys.stdout.write(codec.dumps(report).decode() + "\n")
    return 0 if healthy else 1


async def _control(action: str, run_id: str, url: str | None) -> int:
    from .client import Client

    async with Client(url) as c:
        if action == "state":
            st = await c.state(run_id)
            sys.stdout.write(st.to_json().decode() + "\n")
            return 0
        if action == "retry":
            n = await c.retry(run_id)
            sys.stdout.write(f"{run_id}: running ({n} vertices requeued)\n")
            return 0
        status = await getattr(c, action)(run_id)
        sys.stdout.write(f"{run_id}: {status.value}\n")
    return 0


async def _dlq(action: str, dead_letter_id: str | None, url: str | None) -> int:
    from .client import Client

    async with Client(url) as c:
        if action == "list":
            for d in await c.dead_letters():
                sys.stdout.write(codec.dumps(d).decode() + "\n")
            return 0
        if not dead_letter_id:
            raise ConfigError("aioflow dlq replay needs the dead letter id")
        run_id = await c.replay(dead_letter_id)
        sys.stdout.write(f"{dead_letter_id}: replayed, run {run_id} running\n")
    return 0


async def _flows(name: str | None, url: str | None) -> int:
    from .client import Client
    from .settings import Settings
    from .versions import listing

    window = Settings.from_env().version_wait
    async with Client(url) as c:
        names = [name] if name else [f.name for f in await c.engine.flows()]
        for n in names:
            await c.engine.flow_info(n)  # UnknownFlow for a name never registered
            doc = {"name": n, **await listing(c.engine.redis, n, window=window)}
            sys.stdout.write(codec.dumps(doc).decode() + "\n")
    return 0


async def _schedule(action: str, flow: str, name: str | None, url: str | None) -> int:
    from .client import Client

    async with Client(url) as c:
        if action == "list":
            for st in await c.schedules(flow):
                sys.stdout.write(codec.dumps(st.to_json()).decode() + "\n")
            return 0
        if not name:
            raise ConfigError(f"aioflow schedule {action} needs the schedule name")
        fn = c.pause_schedule if action == "pause" else c.resume_schedule
        st = await fn(flow, name)
        sys.stdout.write(f"{flow} {name}: {'paused' if st.paused else 'running'}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "run":
            return _run(lambda: _control(args.action, args.run_id, args.redis_url))
        if args.command == "dlq":
            return _run(lambda: _dlq(args.action, args.id, args.redis_url))
        if args.command == "submit":
            return _run(lambda: cli_client.submit(args))
        if args.command == "runs":
            return _run(lambda: cli_client.runs(args))
        if args.command == "flows":
            return _run(lambda: _flows(args.name, args.redis_url))
        if args.command == "schedule":
            return _run(lambda: _schedule(args.action, args.flow, args.name, args.redis_url))
        app = load_app(args.app)
        overrides = {
            k: getattr(args, k, None)
            for k in (
                "redis_url",
                "host",
                "port",
                "concurrency",
                "grace",
                "visibility_timeout",
                "metrics_port",
            )
        }
        app.settings = app.settings.replace(**overrides)
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
                    "and pass its URL with --redis-url"
                )
            from .reload import run_reloading

            return run_reloading(
                sys.argv[1:] if argv is None else argv,
                app_spec=args.app,
                redis_url=app.settings.redis_url,
                own_redis=lambda: _own_redis(args.data_dir),
            )
        return _dev(app, args.data_dir, cluster=args.cluster, replicas=args.replicas)
    except AioflowError as e:
        sys.stderr.write(f"aioflow: {e}\n")
        return 2
    except KeyboardInterrupt:
        return 0


def _own_redis(
    data_dir: str, *, cluster: int | None = None, replicas: int = 0
) -> RedisServer | LocalCluster:
    """Start ``aioflow dev``'s own Redis with its data under ``data_dir`` (AOF on): one
    redis-server, or a Redis Cluster of ``cluster`` masters with ``replicas`` replicas
    each; write its URL to ``<data_dir>/redis.url`` for clients in other processes."""
    own: RedisServer | LocalCluster
    if cluster is not None:
        own = LocalCluster(
            Path(data_dir) / "cluster", masters=cluster, replicas=replicas, appendonly=True
        )
        own.start()
        log.info("started a Redis Cluster in %s: %s", own.dir, " ".join(own.urls))
    else:
        own = RedisServer(dir=Path(data_dir) / "redis", port=free_port(), appendonly=True)
        own.start()
        log.info("started redis-server %s (data in %s)", own.url, own.dir)
    # so that clients in other processes can find it
    (Path(data_dir) / "redis.url").write_text(own.url + "\n")
    return own


def _dev(app: App, data_dir: str, *, cluster: int | None = None, replicas: int = 0) -> int:
    server: RedisServer | LocalCluster | None = None
    if cluster is None and replicas:
        raise ConfigError("--replicas needs --cluster N")
    if cluster is not None and app.settings.redis_url:
        raise ConfigError(
            "--cluster starts its own Redis Cluster: drop --redis-url / AIOFLOW_REDIS_URL"
        )
    if not os.environ.get("AIOFLOW_EXPOSE_TRACEBACKS"):  # dev shows tracebacks unless told not to
        app.settings = app.settings.replace(expose_tracebacks=True)
    if not app.settings.redis_url:
        server = _own_redis(data_dir, cluster=cluster, replicas=replicas)
        app.settings = app.settings.replace(redis_url=server.url)
    try:
        return _run(lambda: _serve(app, worker=True, gateway=True))
    finally:
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()


__all__ = ["Engine", "load_app", "main"]
