"""``aioflow submit`` and ``aioflow runs``: the client from the shell, over Redis or HTTP."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from typing import Any

from . import codec
from .client import Client
from .errors import ConfigError, ResultTimeout, RunFailed, RunStopped
from .status import Status


def add_parsers(sub: Any) -> None:
    """Add ``submit`` and ``runs`` to the ``aioflow`` subcommands."""

    def target(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--url",
            "--redis-url",
            dest="url",
            default=None,
            help="redis://... or http(s)://gateway (default: AIOFLOW_REDIS_URL, "
            "then .aioflow/redis.url written by aioflow dev)",
        )
        sp.add_argument(
            "--token",
            default=os.environ.get("AIOFLOW_TOKEN"),
            help="bearer token for an http(s) gateway (default: AIOFLOW_TOKEN)",
        )

    sp = sub.add_parser("submit", help="start a run; print its id (or its result with --wait)")
    sp.add_argument("flow")
    sp.add_argument("data", nargs="?", default=None, help="JSON input, or - to read stdin")
    sp.add_argument("--raw", action="store_true", help="send the input as bytes, not JSON")
    sp.add_argument("--wait", type=float, default=None, metavar="S", help="wait S seconds")
    sp.add_argument("--run-id", default=None, help="name the run (idempotent submit)")
    target(sp)
    sp = sub.add_parser("runs", help="list a flow's runs, newest first")
    sp.add_argument("flow")
    sp.add_argument("--status", default=None, choices=[s.value for s in Status])
    sp.add_argument("--limit", type=int, default=20)
    target(sp)


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


async def submit(args: argparse.Namespace) -> int:
    """Exit 0 with the id (or result); 1 when the run failed or was stopped; 3 when
    ``--wait`` ran out (the id is printed, the run goes on)."""
    data = _input(args.data, args.raw)
    async with Client(args.url, token=args.token) as c:
        rid = await c.submit(args.flow, data, run_id=args.run_id)
        if args.wait is None:
            sys.stdout.write(rid + "\n")
            return 0
        try:
            _write_result(await c.result(rid, timeout=args.wait))
        except ResultTimeout:
            sys.stdout.write(rid + "\n")
            sys.stderr.write(f"aioflow: run {rid} still running after {args.wait:g}s\n")
            return 3
        except (RunFailed, RunStopped) as e:
            sys.stderr.write(f"aioflow: {e}\n")
            return 1
    return 0


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


async def runs(args: argparse.Namespace) -> int:
    """One line per run: id, status, created, ended (UTC), tab-separated."""
    async with Client(args.url, token=args.token) as c:
        page, _ = await c.runs(args.flow, status=args.status, limit=args.limit)
    for r in page:
        sys.stdout.write(f"{r.run_id}\t{r.status.value}\t{_when(r.created)}\t{_when(r.ended)}\n")
    return 0
