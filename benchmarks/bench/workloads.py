"""The workloads W1-W6: what each one runs and how its figure compares with the peers'
(:data:`SPECS`), and the drivers that submit its runs and await their results."""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import bench_app

import aioflow

from .metering import Meter

RESULT_TIMEOUT = 600.0


# -- what is measured, and what it is compared with ------------------------------------


@dataclass(frozen=True)
class Spec:
    key: str
    title: str
    count: int
    vertices: int  # vertex executions per run
    flow: str
    peer: float
    peer_label: str
    prototype: float
    unit: str
    batch: int = 0  # W5: runs per submit_many call


# Peer figures: saq and arq measured on this machine against the same Redis, in one run,
# on 2026-12-01 (the best of the two for each workload).
SPECS = {
    "W1": Spec(
        "W1", "single-node runs", 10_000, 1, "bench-single", 1712, "1,712 runs/s (arq)", 14_000,
        "runs/s",
    ),
    "W2": Spec(
        "W2", "execute() round trips", 300, 1, "bench-single", 1.53, "1.53 ms (saq)", 0.15, "ms",
    ),
    "W3": Spec(
        "W3", "three-node chains", 1_000, 3, "bench-chain", 395, "395 chains/s (arq)", 13_000,
        "chains/s",
    ),
    "W4": Spec(
        "W4", "10-way fan-out runs", 200, 12, "bench-fanout", 114, "114 runs/s (arq)", 7_000,
        "runs/s",
    ),
    "W5": Spec(
        "W5", "bulk-submitted runs", 100_000, 1, "bench-single", 0, "-", 0, "runs/s",
        batch=1000,
    ),
    # each run waits on its own key; the wait's resolution and the node after it
    "W6": Spec(
        "W6", "events resuming waiting runs", 10_000, 2, "bench-wait", 0, "-", 0, "events/s",
    ),
}  # fmt: skip
# CPU per single-vertex run (W1) of the peers, client + worker + Redis, same measurement
PEER_CPU_US = {"arq": 1023, "saq": 1419}
W2_WARMUP = 50
AWAIT_CHUNK = 10_000
WARMUP_SCALE = 0.1  # an unmetered round of each workload at this share of its size first


@dataclass
class Outcome:
    """What one workload measured."""

    spec: Spec
    count: int
    seconds: float
    value: float  # runs/s, or p50 ms for W2
    extra: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    rounds: list[float] = field(default_factory=list)  # the value of every round
    samples: list[float] = field(default_factory=list)  # W2: every latency, in call order


# -- the workloads -----------------------------------------------------------------------


def scaled(n: int, scale: float) -> int:
    return max(1, round(n * scale))


async def _await_all(
    client: aioflow.Client, flow: str, ids: Sequence[str], first: int, errors: list[str]
) -> None:
    results = await asyncio.gather(
        *(client.result(rid, timeout=RESULT_TIMEOUT) for rid in ids), return_exceptions=True
    )
    for i, r in enumerate(results):
        want = bench_app.expected(flow, first + i)
        if isinstance(r, BaseException):
            errors.append(f"{ids[i]}: {type(r).__name__}: {r}")
        elif r != want:
            errors.append(f"{ids[i]}: got {r!r}, expected {want!r}")


async def submit_then_wait(client: aioflow.Client, spec: Spec, n: int, meter: Meter) -> Outcome:
    """Submit ``n`` runs one after another, then await every result (W1, W3, W4)."""
    errors: list[str] = []
    await meter.start()
    t0 = time.perf_counter()
    ids = [await client.submit(spec.flow, i) for i in range(n)]
    submitted = time.perf_counter() - t0
    await meter.mark("submit")
    await _await_all(client, spec.flow, ids, 0, errors)
    seconds = time.perf_counter() - t0
    return Outcome(
        spec,
        n,
        seconds,
        n / seconds,
        extra={"submit_s": round(submitted, 4), "submits_per_s": round(n / submitted, 1)},
        errors=errors,
    )


async def bulk_then_wait(client: aioflow.Client, spec: Spec, n: int, meter: Meter) -> Outcome:
    """Submit ``n`` runs with ``submit_many`` in batches of ``spec.batch``, then await every
    result (W5)."""
    errors: list[str] = []
    await meter.start()
    t0 = time.perf_counter()
    ids: list[str] = []
    for first in range(0, n, spec.batch):
        ids += await client.submit_many(spec.flow, range(first, min(n, first + spec.batch)))
    submitted = time.perf_counter() - t0
    await meter.mark("submit")
    for first in range(0, n, AWAIT_CHUNK):  # bounded memory for 100k waits
        await _await_all(client, spec.flow, ids[first : first + AWAIT_CHUNK], first, errors)
    seconds = time.perf_counter() - t0
    return Outcome(
        spec,
        n,
        seconds,
        n / seconds,
        extra={"submit_s": round(submitted, 4), "submits_per_s": round(n / submitted, 1)},
        errors=errors,
    )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    k = max(0, math.ceil(q / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


async def round_trips(
    client: aioflow.Client, spec: Spec, n: int, warmup: int, meter: Meter
) -> Outcome:
    """``warmup`` then ``n`` sequential ``execute()`` calls (W2); only the latter are metered."""
    errors: list[str] = []
    for i in range(warmup):
        await client.execute(spec.flow, i, timeout=30)
    await meter.start()
    lat: list[float] = []
    gc_before = sum(g["collections"] for g in gc.get_stats())
    t0 = time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        try:
            r = await client.execute(spec.flow, i, timeout=30)
        except aioflow.AioflowError as e:
            errors.append(f"execute #{i}: {type(e).__name__}: {e}")
            continue
        lat.append((time.perf_counter() - s) * 1000)
        if r != bench_app.expected(spec.flow, i):
            errors.append(f"execute #{i}: got {r!r}")
    seconds = time.perf_counter() - t0
    gcs = sum(g["collections"] for g in gc.get_stats()) - gc_before
    in_order = [round(x, 4) for x in lat]
    lat.sort()
    if not lat:
        lat = [math.nan]
    out = Outcome(
        spec,
        n,
        seconds,
        percentile(lat, 50),
        extra={
            "p50_ms": round(percentile(lat, 50), 4),
            "p90_ms": round(percentile(lat, 90), 4),
            "p99_ms": round(percentile(lat, 99), 4),
            "max_ms": round(lat[-1], 4),
            "mean_ms": round(sum(lat) / len(lat), 4),
            "warmup": warmup,
            "client_gc_collections": gcs,
        },
        errors=errors,
    )
    out.samples = in_order
    return out


W6_EVENT = "bench.go"
W6_SENDERS = 64  # events in flight at once in the burst
W6_ONE_BY_ONE = 100  # runs resumed one at a time first


async def _all_waiting(client: aioflow.Client, ids: Sequence[str]) -> None:
    """Until every run's wait vertex is waiting (so no event is taken at registration)."""
    pending = list(ids)
    deadline = time.monotonic() + RESULT_TIMEOUT
    while pending:
        states = await asyncio.gather(*(client.state(rid) for rid in pending[:2000]))
        done = {
            rid
            for rid, st in zip(pending, states, strict=False)
            if st.vertices.get("go") is not None and st.vertices["go"].status == "waiting"
        }
        pending = [rid for rid in pending if rid not in done]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} runs never reached their wait")


async def events_then_resume(client: aioflow.Client, spec: Spec, n: int, meter: Meter) -> Outcome:
    """Submit ``n`` runs that each wait on their own key and let them all reach the wait
    (not metered). Then resume the first ``W6_ONE_BY_ONE`` one at a time (send its event,
    await its result: the latency of an idle system), and the rest in a burst, their
    events ``W6_SENDERS`` at a time, awaiting every result. A run's result is the
    seconds from its event's send to the node after the wait (W6)."""
    errors: list[str] = []
    ids: list[str] = []
    for first in range(0, n, 1000):
        ids += await client.submit_many(spec.flow, range(first, min(n, first + 1000)))
    await _all_waiting(client, ids)
    one_by_one = min(W6_ONE_BY_ONE, n // 2)
    await meter.start()
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(W6_SENDERS)

    async def send(i: int) -> None:
        async with sem:
            res = await client.send_event(W6_EVENT, {"sent": time.time()}, key=str(i))
            if res["resolved"] != 1:
                errors.append(f"event {i}: resolved {res['resolved']} runs, expected 1")

    idle: list[float] = []
    for i in range(one_by_one):
        await send(i)
        idle.append(float(await client.result(ids[i], timeout=RESULT_TIMEOUT)) * 1000)
    t1 = time.perf_counter()
    await asyncio.gather(*(send(i) for i in range(one_by_one, n)))
    sent = time.perf_counter() - t1
    await meter.mark("submit")
    results = await asyncio.gather(
        *(client.result(rid, timeout=RESULT_TIMEOUT) for rid in ids[one_by_one:]),
        return_exceptions=True,
    )
    seconds = time.perf_counter() - t0
    burst: list[float] = []
    for rid, r in zip(ids[one_by_one:], results, strict=True):
        if isinstance(r, BaseException):
            errors.append(f"{rid}: {type(r).__name__}: {r}")
        else:
            burst.append(float(r) * 1000)
    idle.sort()
    burst.sort()
    idle = idle or [math.nan]
    burst = burst or [math.nan]
    return Outcome(
        spec,
        n,
        seconds,
        (n - one_by_one) / sent,
        extra={
            "one_by_one": one_by_one,
            "idle_resume_p50_ms": round(percentile(idle, 50), 3),
            "idle_resume_p99_ms": round(percentile(idle, 99), 3),
            "burst_send_s": round(sent, 4),
            "burst_resume_p50_ms": round(percentile(burst, 50), 3),
            "burst_resume_p99_ms": round(percentile(burst, 99), 3),
            "all_resumed_s": round(seconds, 4),
        },
        errors=errors,
    )
