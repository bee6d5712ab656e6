"""Worker subprocesses and the audits of the chaos tests (also used by benchmarks/chaos.py).

Nothing here sleeps to wait for something: waits are :func:`tests.helpers.wait_until`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from aioflow.core import codec
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.outage import REDIS_ERRORS
from tests.chaos import apps
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
APP = f"{Path(apps.__file__).resolve()}:app"
READY = "concurrency"  # the worker's "worker <name>: concurrency N, flows ..." line
REFUSED = "refused"  # the worker's log line when a late completion is fenced


class WorkerProc:
    """One ``python -m aioflow worker`` subprocess; its stderr goes to ``log_path``."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    def __repr__(self) -> str:
        return f"<WorkerProc pid={self.pid} rc={self.proc.poll()}>"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (waking it first if stopped) and reap; idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
        self.proc.wait()

    async def ready(self, timeout: float = 20.0) -> None:
        """Wait until the worker has checked the server and registered its flows."""
        await wait_until(
            lambda: READY in self.log() or not self.running,
            timeout=timeout,
            what=f"worker {self.pid} to start",
        )
        if not self.running:
            raise AssertionError(f"worker {self.pid} died while starting:\n{self.log()[-3000:]}")

    async def exited(self, timeout: float = 20.0) -> int:
        """Wait for the process to end; its exit code."""
        await wait_until(lambda: not self.running, timeout=timeout, what=f"worker {self.pid} exit")
        return self.proc.wait()


class Workers:
    """Starts worker subprocesses for ``tests/chaos/apps.py:app``; ``close()`` kills them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[WorkerProc] = []

    def start(
        self,
        redis_url: str,
        *,
        concurrency: int = 100,
        visibility_timeout: float = 1.0,
        grace: float | None = None,
        env: Mapping[str, str] | None = None,
        counter_url: str | None = None,
    ) -> WorkerProc:
        """Start a worker on ``redis_url``; its nodes count executions on ``counter_url``
        (default: the same Redis)."""
        cmd = [
            sys.executable,
            "-m",
            "aioflow",
            "worker",
            APP,
            "--redis-url",
            redis_url,
            "--concurrency",
            str(concurrency),
            "--visibility-timeout",
            str(visibility_timeout),
        ]
        if grace is not None:
            cmd += ["--grace", str(grace)]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AIOFLOW_", "CHAOS_"))}
        full_env.update({"CHAOS_REDIS_URL": counter_url or redis_url, "PYTHONUNBUFFERED": "1"})
        full_env.update(env or {})
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"worker-{len(self.procs)}.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=full_env,
            )
        w = WorkerProc(proc, log_path)
        self.procs.append(w)
        return w

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(f"--- {w} ---\n{w.log()[-tail:]}" for w in self.procs)

    def close(self) -> None:
        for w in self.procs:
            w.kill()


# -- audits -------------------------------------------------------------------------------


def stream_of(flow: str) -> str:
    return keys.stream(flow, 0)


async def pel_count(r: Redis, flow: str) -> int:
    """Entries of the flow's stream delivered and not acked (XPENDING summary count)."""
    summary = await r.xpending(stream_of(flow), keys.GROUP)
    return int(summary["pending"])


async def pel_empty(r: Redis, flow: str) -> bool:
    return await pel_count(r, flow) == 0


async def consumer_of(r: Redis, flow: str, pid: int) -> str | None:
    """The consumer name the worker process ``pid`` reads with (it embeds the pid)."""
    for c in await r.xinfo_consumers(stream_of(flow), keys.GROUP):
        name = c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
        if f"-{pid}-" in name:
            return name
    return None


async def pending_of(r: Redis, flow: str, pid: int) -> int:
    """How many entries worker ``pid`` holds (delivered to it, not acked)."""
    name = await consumer_of(r, flow, pid)
    if name is None:
        return 0
    summary = await r.xpending(stream_of(flow), keys.GROUP)
    for c in summary["consumers"]:
        cname = c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
        if cname == name:
            return int(c["pending"])
    return 0


async def held_by(r: Redis, flow: str, pid: int) -> set[tuple[str, str]]:
    """The (run id, vertex) of every entry worker ``pid`` holds."""
    name = await consumer_of(r, flow, pid)
    if name is None:
        return set()
    stream = stream_of(flow)
    rows = await r.xpending_range(stream, keys.GROUP, "-", "+", 100_000, consumername=name)
    out: set[tuple[str, str]] = set()
    for row in rows:
        entries: Any = await r.xrange(stream, row["message_id"], row["message_id"])
        for _, f in entries:
            out.add((f"{flow}.0.{f[b'r'].decode()}", f[b"a"].decode()))
    return out


async def entries_added(r: Redis, flow: str) -> int:
    """Entries ever added to the flow's stream (XINFO STREAM entries-added, Redis 7)."""
    info = await r.xinfo_stream(stream_of(flow))
    if "entries-added" not in info:
        pytest.skip("the fan-out audit needs Redis >= 7 (XINFO STREAM entries-added)")
    return int(info["entries-added"])


async def exec_counts(r: Redis, run_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """Executions started per run and vertex, as the nodes recorded them."""
    ids = list(run_ids)
    async with r.pipeline(transaction=False) as pipe:
        for rid in ids:
            pipe.hgetall(apps.EXEC_PREFIX + rid)
        rows = await pipe.execute()
    return {
        rid: {k.decode(): int(v) for k, v in row.items()}
        for rid, row in zip(ids, rows, strict=True)
    }


async def run_fields(r: Redis, run_ids: Iterable[str], fields: list[str]) -> dict[str, list[Any]]:
    ids = list(run_ids)
    async with r.pipeline(transaction=False) as pipe:
        for rid in ids:
            pipe.hmget(RunId.parse(rid).run, fields)
        rows = await pipe.execute()
    return dict(zip(ids, rows, strict=True))


async def all_runs(r: Redis, flow: str) -> list[str]:
    """Every run of the flow in its index."""
    members: Any = await r.zrange(f"{keys.tag(flow, 0)}:i", 0, -1)
    return [f"{flow}.0.{m.decode()}" for m in members]


async def dlq(r: Redis, flow: str) -> list[dict[str, str]]:
    rows: Any = await r.xrange(f"{keys.tag(flow, 0)}:dlq")
    return [
        {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()} for _, fields in rows
    ]


class DoneCounter:
    """Counts the "run finished" notifications of a flow's partition 0, per run key.

    A run must be announced once: a second notification means it got a second result.
    """

    def __init__(self, url: str, flow: str) -> None:
        self.flow = flow
        self.redis: Redis = aioredis.Redis.from_url(url)
        self.ps: PubSub = self.redis.pubsub()
        self.counts: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DoneCounter:
        # aioflow publishes on sharded channels where Redis has them (7+)
        info: Any = await self.redis.info("server")
        self.sharded = int(str(info["redis_version"]).split(".")[0]) >= 7
        channel = keys.done_channel(self.flow, 0)
        if self.sharded:
            await self.ps.ssubscribe(channel)
        else:
            await self.ps.subscribe(channel)
        first = await self.ps.get_message(timeout=5.0)
        assert first is not None and first["type"] in ("subscribe", "ssubscribe")
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.ps.aclose()
        await self.redis.aclose()

    async def _read(self) -> None:
        while True:
            try:
                msg = await self.ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except REDIS_ERRORS:
                await asyncio.sleep(0.05)
                continue
            if msg is not None and msg["type"] in ("message", "smessage"):
                key, status, _ = msg["data"].split(b"\n", 2)
                self.counts[f"{self.flow}.0.{key.decode()}"] += 1
                self.statuses[status.decode()] += 1

    @property
    def finished(self) -> int:
        return sum(self.statuses.values())

    def repeated(self) -> dict[str, int]:
        return {k: n for k, n in self.counts.items() if n > 1}


@dataclass
class Audit:
    """What happened to a set of diamond runs, from Redis' own records."""

    submitted: int
    completed: int = 0
    lost: list[str] = field(default_factory=list)  # not completed with the right result
    over_joined: list[str] = field(default_factory=list)  # completed, join counter != 2
    extra_entries: int = 0  # stream entries beyond one per vertex (+ hand-backs)
    dlq: int = 0
    pel: int = 0

    @property
    def duplicated(self) -> int:
        return len(self.over_joined) + max(0, self.extra_entries)

    def __str__(self) -> str:
        return (
            f"submitted={self.submitted} completed={self.completed} lost={len(self.lost)} "
            f"over_joined={len(self.over_joined)} extra_entries={self.extra_entries} "
            f"dlq={self.dlq} pel={self.pel} lost_ids={self.lost[:5]}"
        )


async def audit_diamond(r: Redis, inputs: Mapping[str, int], *, handed_back: int = 0) -> Audit:
    """Check every run of ``inputs`` (run id -> input) completed with its one right result.

    - status completed, result and the join's stored output equal to the expected value;
    - the join's parent counter ``n:d`` is exactly 2: each parent's completion applied once;
    - the stream got exactly one entry per vertex of every run of the flow (plus
      ``handed_back`` entries a draining worker handed back): each fan-out applied once;
    - nothing is dead-lettered, nothing is left pending.
    """
    rep = Audit(submitted=len(inputs))
    rows = await run_fields(r, inputs, ["status", "result", "o:d", "n:d"])
    for rid, (status, result, out, joined) in rows.items():
        want = apps.diamond_result(inputs[rid])
        ok = (
            status == b"completed"
            and result is not None
            and codec.decode(result) == want
            and out is not None
            and codec.decode(out) == want
        )
        if ok:
            rep.completed += 1
            if joined is None or int(joined) != 2:
                rep.over_joined.append(rid)
        else:
            rep.lost.append(rid)
    runs = len(await all_runs(r, "diamond"))
    rep.extra_entries = await entries_added(r, "diamond") - 4 * runs - handed_back
    rep.dlq = len(await dlq(r, "diamond"))
    rep.pel = await pel_count(r, "diamond")
    return rep
