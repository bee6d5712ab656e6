"""The one-shot commands, the client from the shell: ``submit``, ``runs``, ``run``,
``dlq``, ``event`` (over Redis or an HTTP gateway), ``flows`` and ``schedule``
(over Redis).

Each one resolves its URL (``--url``, else what :class:`~aioflow.Client` finds),
checks its scheme, does its work and returns an exit code. An unreachable Redis or
gateway is one :class:`~aioflow.RedisUnavailable` naming the URL (exit 2)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aioflow.client.client import Client, default_url
from aioflow.core import codec
from aioflow.core.errors import (
    AioflowError,
    ConfigError,
    GatewayUnavailable,
    RedisFull,
    RedisUnavailable,
    ResultTimeout,
    RunFailed,
    RunStopped,
)
from aioflow.definitions.status import Status
from aioflow.store.outage import REDIS_ERRORS

REDIS_SCHEMES = ("redis", "rediss", "unix")
GATEWAY_SCHEMES = ("http", "https")


def shown(url: str) -> str:
    """``url`` as it may appear in a message or a log: its password masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def check_url(url: str, *, gateway: bool, command: str = "this command") -> str:
    """``url`` when its scheme is one ``command`` takes (Redis ones, and http(s)
    when ``gateway``); ConfigError otherwise."""
    scheme = urlsplit(url).scheme.lower()
    if not url.lower().startswith(f"{scheme}://"):
        scheme = ""  # redis-py and aiohttp want scheme://
    if scheme in REDIS_SCHEMES or (gateway and scheme in GATEWAY_SCHEMES):
        return url
    if gateway:
        wanted = "redis://, rediss://, unix:// or an http(s):// gateway"
        raise ConfigError(f"unsupported URL {shown(url)!r}: use {wanted}")
    if scheme in GATEWAY_SCHEMES:
        raise ConfigError(
            f"{command} talks to Redis itself: pass a redis://, rediss:// or unix:// URL, "
            f"not the gateway {shown(url)}"
        )
    raise ConfigError(f"unsupported URL {shown(url)!r}: use redis://, rediss:// or unix://")


def add_url(sp: argparse.ArgumentParser, *, gateway: bool, default: str = "") -> None:
    """``--url`` (alias ``--redis-url``), and ``--token`` when a gateway will do."""
    where = "redis://, rediss://, unix://" + (" or http(s)://gateway" if gateway else "")
    sp.add_argument(
        "--url",
        "--redis-url",
        dest="url",
        default=None,
        metavar="URL",
        help=f"{where} (default: {default or 'AIOFLOW_REDIS_URL, then .aioflow/redis.url'})",
    )
    if gateway:
        sp.add_argument(
            "--token",
            default=os.environ.get("AIOFLOW_TOKEN"),
            help="bearer token for an http(s) gateway (default: AIOFLOW_TOKEN)",
        )


def add_parsers(sub: Any) -> None:
    """Add the one-shot commands to the ``aioflow`` subcommands."""
    sp = sub.add_parser("submit", help="start a run; print its id (or its result with --wait)")
    sp.add_argument("flow")
    sp.add_argument("data", nargs="?", default=None, help="JSON input, or - to read stdin")
    sp.add_argument("--raw", action="store_true", help="send the input as bytes, not JSON")
    sp.add_argument("--wait", type=float, default=None, metavar="S", help="wait S seconds")
    sp.add_argument("--run-id", default=None, help="name the run (idempotent submit)")
    add_url(sp, gateway=True)
    sp = sub.add_parser("runs", help="list a flow's runs, newest first")
    sp.add_argument("flow")
    sp.add_argument("--status", default=None, choices=[s.value for s in Status])
    sp.add_argument("--limit", type=int, default=20)
    add_url(sp, gateway=True)
    sp = sub.add_parser(
        "run", help="a run's state or result; pause, resume, stop, retry or signal it"
    )
    sp.add_argument(
        "action", choices=["state", "result", "pause", "resume", "stop", "retry", "signal"]
    )
    sp.add_argument("run_id", help="the run id, or the caller-chosen one with --flow")
    sp.add_argument(
        "signal", nargs="*", metavar="VERTEX DATA", help="signal: the wait vertex and its data"
    )
    sp.add_argument("--flow", default=None, help="RUN_ID is the id the caller chose in this flow")
    sp.add_argument(
        "--wait", type=float, default=None, metavar="S", help="result: wait at most S seconds"
    )
    sp.add_argument("--raw", action="store_true", help="signal: send DATA as bytes, not JSON")
    add_url(sp, gateway=True)
    sp = sub.add_parser("event", help="send an event")
    sp.add_argument("action", choices=["send"])
    sp.add_argument("name", help="the event name")
    sp.add_argument("data", nargs="?", default=None, help="JSON data, or - to read stdin")
    sp.add_argument("--key", default=None, help="the event's key (default: none)")
    sp.add_argument("--id", default=None, help="the event's id: a second send of it does nothing")
    sp.add_argument("--raw", action="store_true", help="send the data as bytes, not JSON")
    add_url(sp, gateway=True)
    sp = sub.add_parser("dlq", help="list or replay dead letters")
    sp.add_argument("action", choices=["list", "replay"])
    sp.add_argument("id", nargs="?", help="dead letter id (replay)")
    add_url(sp, gateway=True)
    sp = sub.add_parser("flows", help="list flows and their versions")
    sp.add_argument("name", nargs="?", help="only this flow")
    add_url(sp, gateway=False)
    sp = sub.add_parser("schedule", help="list, pause or resume a flow's schedules")
    sp.add_argument("action", choices=["list", "pause", "resume"])
    sp.add_argument("flow")
    sp.add_argument("name", nargs="?", help="schedule name (pause, resume)")
    add_url(sp, gateway=False)


def _input(arg: str | None, raw: bool) -> Any:
    if arg is None:
        return b"" if raw else None
    blob = sys.stdin.buffer.read() if arg == "-" else arg.encode()
    if raw:
        return blob
    try:
        return codec.loads(blob) if blob.strip() else None
    except ValueError as e:
        raise ConfigError(f"input is not JSON ({e}); pass --raw to send bytes") from None


def _write_result(value: Any) -> None:
    if isinstance(value, bytes):
        sys.stdout.buffer.write(value)
        sys.stdout.flush()
        return
    sys.stdout.write(codec.dumps(value).decode() + "\n")


def _line(text: str) -> None:
    sys.stdout.write(text + "\n")


async def _result(c: Client, rid: str, wait: float | None, flow: str | None = None) -> int:
    """Print the result: exit 0; 1 when the run failed or was stopped; 3 (printing the
    id) when it still runs after ``wait`` seconds."""
    try:
        value = await c.result(rid, timeout=wait, flow=flow)
    except ResultTimeout:
        _line(rid)
        sys.stderr.write(f"aioflow: run {rid} still running after {wait or 0:g}s\n")
        return 3
    except (RunFailed, RunStopped) as e:
        sys.stderr.write(f"aioflow: {e}\n")
        return 1
    _write_result(value)
    return 0


async def submit(c: Client, args: argparse.Namespace) -> int:
    """Exit 0 with the id (or result); 1 when the run failed or was stopped; 3 when
    ``--wait`` ran out (the id is printed, the run goes on)."""
    data = _input(args.data, args.raw)
    rid = await c.submit(args.flow, data, run_id=args.run_id)
    if args.wait is None:
        _line(rid)
        return 0
    return await _result(c, rid, args.wait)


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


async def runs(c: Client, args: argparse.Namespace) -> int:
    """One line per run: id, status, created, ended (UTC), tab-separated."""
    page, _ = await c.runs(args.flow, status=args.status, limit=args.limit)
    for r in page:
        _line(f"{r.run_id}\t{r.status.value}\t{_when(r.created)}\t{_when(r.ended)}")
    return 0


async def control(c: Client, args: argparse.Namespace) -> int:
    """``aioflow run ACTION RUN_ID [--flow NAME]``: the state as JSON, the result, or
    the run's new status."""
    action, rid, flow = args.action, args.run_id, args.flow
    if action == "signal":
        return await signal(c, args)
    if args.signal:
        raise ConfigError(f"aioflow run {action} takes no argument after the run id")
    if action == "result":
        return await _result(c, rid, args.wait, flow)
    if action == "state":
        _line((await c.state(rid, flow=flow)).to_json().decode())
    elif action == "retry":
        n = await c.retry(rid, flow=flow)
        _line(f"{rid}: running ({n} vertices requeued)")
    else:
        call: Callable[..., Awaitable[Status]] = getattr(c, action)
        _line(f"{rid}: {(await call(rid, flow=flow)).value}")
    return 0


async def signal(c: Client, args: argparse.Namespace) -> int:
    """``aioflow run signal RUN_ID VERTEX [DATA]``: exit 0 when the wait took it, 1 when
    the run ended or the vertex was resolved already."""
    if len(args.signal) not in (1, 2):
        raise ConfigError("aioflow run signal takes RUN_ID VERTEX [DATA]")
    vertex, data = (
        args.signal[0],
        _input(args.signal[1] if len(args.signal) > 1 else None, args.raw),
    )
    if await c.signal(args.run_id, vertex, data, flow=args.flow):
        _line(f"{args.run_id}: signal taken by {vertex}")
        return 0
    sys.stderr.write(
        f"aioflow: signal not taken: run {args.run_id} ended or {vertex} was resolved already\n"
    )
    return 1


async def event(c: Client, args: argparse.Namespace) -> int:
    """``aioflow event send NAME [DATA] [--key K] [--id ID]``: prints the answer as JSON
    (``{"resolved": n, "started": [run ids]}``)."""
    data = _input(args.data, args.raw)
    answer = await c.send_event(args.name, data, key=args.key, event_id=args.id)
    _line(codec.dumps(answer).decode())
    return 0


async def dlq(c: Client, args: argparse.Namespace) -> int:
    """Dead letters as JSON lines, or replay one."""
    if args.action == "list":
        for d in await c.dead_letters():
            _line(codec.dumps(d).decode())
        return 0
    if not args.id:
        raise ConfigError("aioflow dlq replay needs the dead letter id")
    rid = await c.replay(args.id)
    _line(f"{args.id}: replayed, run {rid} running")
    return 0


async def flows(c: Client, args: argparse.Namespace) -> int:
    """One JSON line per flow with its versions."""
    from aioflow.core.settings import Settings
    from aioflow.engine.registry import listing

    window = Settings.from_env().version_wait
    names = [args.name] if args.name else [f.name for f in await c.engine.flows()]
    for n in names:
        await c.engine.flow_info(n)  # UnknownFlow for a name never registered
        _line(codec.dumps({"name": n, **await listing(c.engine.redis, n, window=window)}).decode())
    return 0


async def schedule(c: Client, args: argparse.Namespace) -> int:
    """List a flow's schedules as JSON lines, or pause or resume one."""
    if args.action == "list":
        for st in await c.schedules(args.flow):
            _line(codec.dumps(st.to_json()).decode())
        return 0
    if not args.name:
        raise ConfigError(f"aioflow schedule {args.action} needs the schedule name")
    fn = c.pause_schedule if args.action == "pause" else c.resume_schedule
    st = await fn(args.flow, args.name)
    _line(f"{args.flow} {args.name}: {'paused' if st.paused else 'running'}")
    return 0


Command = Callable[[Client, argparse.Namespace], Awaitable[int]]
# command -> (what it does, whether a gateway URL will do)
COMMANDS: dict[str, tuple[Command, bool]] = {
    "submit": (submit, True),
    "runs": (runs, True),
    "run": (control, True),
    "dlq": (dlq, True),
    "event": (event, True),
    "flows": (flows, False),
    "schedule": (schedule, False),
}


def _reason(exc: BaseException) -> str:
    """The innermost cause of ``exc`` that says something (``[Errno 111] Connection
    refused`` rather than three wrappers around it)."""
    found = str(exc) or type(exc).__name__
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if str(cause):
            found = str(cause)
        cause = cause.__cause__ or cause.__context__
    return found


async def run(args: argparse.Namespace) -> int:
    """Run the one-shot command ``args.command``; its exit code."""
    fn, gateway = COMMANDS[args.command]
    url = check_url(args.url or default_url(), gateway=gateway, command=f"aioflow {args.command}")
    what = "gateway" if urlsplit(url).scheme.lower() in GATEWAY_SCHEMES else "Redis"
    try:
        async with Client(url, token=getattr(args, "token", None)) as c:
            return await fn(c, args)
    except RedisFull:
        raise
    except (GatewayUnavailable, RedisUnavailable) as e:
        if what == "gateway" and isinstance(e, GatewayUnavailable) and e.__cause__ is None:
            raise  # the gateway answered (a 503: its own Redis is away); it says so
        raise RedisUnavailable(f"cannot reach {what} at {shown(url)}: {_reason(e)}") from e
    except REDIS_ERRORS as e:
        if isinstance(e, AioflowError):
            raise
        raise RedisUnavailable(f"cannot reach {what} at {shown(url)}: {_reason(e)}") from e
