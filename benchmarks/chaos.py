"""Chaos benchmark: the kill scenarios of ``tests/chaos`` on a larger load.

Each scenario runs ``--runs`` diamond runs (a -> b, c -> d; every node awaits
``--sleep`` seconds) on a fresh ``redis-server`` with ``--workers`` worker processes
(``python -m aioflow worker tests/chaos/apps.py:app``, visibility timeout 1 s), and
injects ``--faults`` faults while they run, spaced by progress:

- ``sigkill``: SIGKILL the worker holding the most messages, start a fresh one;
- ``sigstop``: SIGSTOP the busiest worker for 1.5x the visibility timeout, then SIGCONT
  it (its late completions must be refused: "fenced");
- ``redis``: ``kill -9`` redis-server (appendonly yes, appendfsync always) and restart
  it on the same port and data directory; submits and result reads retry meanwhile.

Then it audits Redis and prints, per scenario, runs submitted / completed / lost /
duplicated vertex results applied, with the cost of at-least-once (node executions
beyond one per vertex) and the fenced completions. ``duplicated`` adds up: completed
runs whose join counted a parent twice (``n:d`` != 2), stream entries beyond one per
vertex (a fan-out applied twice), and runs announced finished more than once.
Exit code 1 when anything is lost or duplicated.

Workers run with ``AIOFLOW_MAX_DELIVERIES=100``: repeated kills may redeliver a
message more than the default 5 times, and this measures loss, not dead-lettering
(dead letters would show up as lost runs).

Usage: python benchmarks/chaos.py [--runs 5000] [--only sigkill,sigstop,redis]
       [--faults 4] [--workers 3] [--concurrency 200] [--sleep 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402
from tests.chaos import apps  # noqa: E402
from tests.chaos.harness import (  # noqa: E402
    REFUSED,
    DoneCounter,
    WorkerProc,
    Workers,
    audit_diamond,
    exec_counts,
    held_by,
    pel_empty,
    pending_of,
)
from tests.helpers import wait_until  # noqa: E402

import aioflow  # noqa: E402
from aioflow.store.outage import REDIS_ERRORS  # noqa: E402
from aioflow.store.redis_server import RedisServer  # noqa: E402

SCENARIOS = ("sigkill", "sigstop", "redis")
VT = 1.0


@dataclass
class Outcome:
    scenario: str
    submitted: int
    completed: int
    lost: int
    duplicated: int
    reexecuted: int
    fenced: int
    faults: int
    held: int  # messages held by killed workers (sigkill) at their death
    seconds: float
    detail: str

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0


async def _joins_at_least(r: Redis, target: int) -> bool:
    try:
        raw = await r.hget(apps.TOTAL, "d")
    except REDIS_ERRORS:
        return False
    return int(raw or 0) >= target


async def _submit(client: aioflow.Client, run_id: str, x: int) -> str:
    backoff = 0.02
    while True:
        try:
            return await client.submit("diamond", x, run_id=run_id)
        except aioflow.RedisUnavailable:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.5)


async def _result(client: aioflow.Client, run_id: str, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await client.result(run_id, timeout=max(0.1, deadline - time.monotonic()))
        except aioflow.RedisUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        except aioflow.AioflowError as e:
            return e


async def _busiest(r: Redis, procs: list[WorkerProc]) -> WorkerProc:
    pending = [(await pending_of(r, "diamond", p.pid), i) for i, p in enumerate(procs)]
    return procs[max(pending)[1]]


async def scenario(name: str, args: argparse.Namespace, tmp: Path) -> Outcome:
    server = RedisServer(dir=tmp / "redis", appendonly=name == "redis", appendfsync="always")
    server.start()
    pool = Workers(tmp / "workers")
    env = {"CHAOS_SLEEP": str(args.sleep), "AIOFLOW_MAX_DELIVERIES": "100"}
    url = server.url
    try:

        def start() -> WorkerProc:
            return pool.start(url, concurrency=args.concurrency, visibility_timeout=VT, env=env)

        procs = [start() for _ in range(args.workers)]
        for p in procs:
            await p.ready()
        inputs: dict[str, int] = {}
        held = 0
        n = args.runs
        async with (
            aioflow.Client(url) as client,
            DoneCounter(url, "diamond") as done,
            Redis.from_url(url) as probe,
        ):
            t0 = time.monotonic()

            async def submit_all() -> None:
                for lo in range(0, n, 100):
                    chunk = range(lo, min(n, lo + 100))
                    ids = await asyncio.gather(*(_submit(client, f"{name}{i}", i) for i in chunk))
                    inputs.update(zip(ids, chunk, strict=True))

            submitter = asyncio.create_task(submit_all())
            try:
                for k in range(1, args.faults + 1):
                    target = k * n // (args.faults + 1)
                    await wait_until(
                        functools.partial(_joins_at_least, probe, target),
                        timeout=300,
                        what=f"{target} joins",
                    )
                    if name == "sigkill":
                        victim = await _busiest(probe, procs)
                        victim.signal(signal.SIGKILL)
                        victim.proc.wait()
                        held += len(await held_by(probe, "diamond", victim.pid))
                        procs.remove(victim)
                        procs.append(start())
                    elif name == "sigstop":
                        victim = await _busiest(probe, procs)
                        victim.signal(signal.SIGSTOP)
                        try:
                            await asyncio.sleep(VT * 1.5)  # the stall itself
                        finally:
                            victim.signal(signal.SIGCONT)
                    else:
                        server.kill()
                        await asyncio.to_thread(server.start)
                await submitter
            finally:
                submitter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await submitter
            await asyncio.gather(*(_result(client, rid, 300) for rid in inputs))
            seconds = time.monotonic() - t0
            # let the late notifications arrive before counting repeats
            with contextlib.suppress(AssertionError):
                await wait_until(lambda: done.finished >= n, timeout=5)
            repeated = len(done.repeated())

        async with Redis.from_url(url) as r:
            with contextlib.suppress(AssertionError):
                await wait_until(lambda: pel_empty(r, "diamond"), timeout=30)
            rep = await audit_diamond(r, inputs)
            execs = await exec_counts(r, inputs)
        ran = sum(sum(c.values()) for c in execs.values())
        fenced = sum(p.log().count(REFUSED) for p in pool.procs)
        return Outcome(
            scenario=name,
            submitted=len(inputs),
            completed=rep.completed,
            lost=len(rep.lost) + rep.dlq,
            duplicated=rep.duplicated + repeated,
            reexecuted=ran - 4 * len(inputs),
            fenced=fenced,
            faults=args.faults,
            held=held,
            seconds=seconds,
            detail=f"{rep} repeated_notifications={repeated}",
        )
    finally:
        pool.close()
        server.stop()


async def main(args: argparse.Namespace) -> int:
    outcomes: list[Outcome] = []
    for name in args.only:
        with tempfile.TemporaryDirectory(prefix=f"aioflow-chaos-{name}-") as tmp:
            print(f"{name}: {args.runs} runs, {args.faults} faults ...", flush=True)
            outcomes.append(await scenario(name, args, Path(tmp)))
            print(f"  {outcomes[-1].detail}", flush=True)
    head = (
        f"{'scenario':<9} {'submitted':>9} {'completed':>9} {'lost':>5} {'duplicated':>10} "
        f"{'re-executed':>11} {'fenced':>6} {'faults':>6} {'held':>5} {'seconds':>7}"
    )
    print(head)
    for o in outcomes:
        print(
            f"{o.scenario:<9} {o.submitted:>9} {o.completed:>9} {o.lost:>5} {o.duplicated:>10} "
            f"{o.reexecuted:>11} {o.fenced:>6} {o.faults:>6} {o.held:>5} {o.seconds:>7.1f}"
        )
    bad = [o.scenario for o in outcomes if not o.ok]
    if bad:
        print(f"FAIL: lost or duplicated work in {', '.join(bad)}")
        return 1
    print("OK: nothing lost, nothing doubled")
    return 0


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=5000)
    p.add_argument("--faults", type=int, default=4, help="faults injected per scenario")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--sleep", type=float, default=0.05, help="seconds each node awaits")
    p.add_argument(
        "--only",
        type=lambda s: [x for x in s.split(",") if x],
        default=list(SCENARIOS),
        help="comma-separated scenarios: " + ",".join(SCENARIOS),
    )
    args = p.parse_args(argv)
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {sorted(unknown)}")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(_parse())))
