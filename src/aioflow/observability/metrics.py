"""Prometheus metrics of a worker and of the gateway (``prometheus_client``).

Each :class:`WorkerMetrics` / :class:`GatewayMetrics` owns its own
``CollectorRegistry`` rather than the process-global default, so two workers in
one process (tests, ``aioflow dev``) count apart. Workers serve theirs with
:func:`serve` on ``metrics_port``; the gateway renders its own on ``/metrics``.

A worker's per-vertex hooks are a dictionary lookup and a few additions to plain
numbers, turned into metrics only when scraped (prometheus_client's own
counters take a lock per increment: several microseconds a vertex). ``vertex`` is the
definition's node name, never a foreach address, so label cardinality stays
bounded by the definitions.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("aioflow.metrics")

OUTCOMES = ("completed", "failed", "retried", "timed_out", "fenced", "cancelled", "lease_lost")
# what the completion record's vertex status means as an execution outcome
_OUTCOME = {
    "completed": "completed",
    "failed": "failed",
    "retrying": "retried",
    "stopped": "cancelled",
    "queued": "cancelled",  # handed back by a draining worker
    "": "cancelled",  # nothing queued yet: its task was cancelled by a drain
}


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class Execution(Protocol):
    """What the worker's metrics read of a vertex message (``aioflow.worker.vertex.Msg``)."""

    t0: float  # set when it starts

    @property
    def id(self) -> bytes: ...
    @property
    def flow(self) -> _Named: ...
    @property
    def node(self) -> _Named: ...
    @property
    def kind(self) -> str: ...
    @property
    def vstatus(self) -> str: ...
    @property
    def timed_out(self) -> bool: ...


def outcome(vstatus: str, timed_out: bool) -> str:
    """The outcome of an execution whose completion record sets ``vstatus``."""
    if timed_out:
        return "timed_out"
    return _OUTCOME.get(vstatus, "opened" if vstatus == "running" else "completed")


_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300)
_OUTCOME_INDEX = {o: i for i, o in enumerate(OUTCOMES)}


class _Hist:
    """A histogram as plain numbers: observing is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        cumulative, total = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += n
            cumulative.append(("+Inf" if bound == math.inf else str(float(bound)), total))
        family.add_metric(labels, cumulative, self.sum)


class _Vertex:
    """The numbers of one (flow, vertex)."""

    __slots__ = ("duration", "outcomes")

    def __init__(self) -> None:
        self.outcomes = [0] * len(OUTCOMES)
        self.duration = _Hist(_DURATION_BUCKETS)


class WorkerMetrics:
    """What one worker counts. ``inflight`` answers the number of running messages.

    The hot path only adds to plain numbers (a worker counts from one event loop);
    :attr:`registry` turns them into Prometheus metrics when scraped."""

    def __init__(self, inflight: Callable[[], int]) -> None:
        self._inflight = inflight
        self._vertices: dict[tuple[str, str], _Vertex] = {}
        self._by_node: dict[int, _Vertex] = {}
        self._waits: dict[str, _Hist] = {}
        self._finished: dict[tuple[str, str], int] = {}
        self.redis_full = 0  # calls Redis refused at maxmemory
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def started(self, m: Execution, now: float) -> None:
        """A message starts running: its queue wait, from the stream entry id (ms)."""
        m.t0 = time.perf_counter()
        h = self._waits.get(m.flow.name)
        if h is None:
            h = self._waits[m.flow.name] = _Hist(_WAIT_BUCKETS)
        h.observe(max(0.0, now - int(m.id[: m.id.index(b"-")]) / 1000))

    def done(self, m: Execution, result: bytes) -> None:
        """A completion record was applied; ``result`` is the complete script's answer."""
        vstatus = m.vstatus
        if m.kind == "f" or vstatus == "running":  # flow hooks; a group's open (counted at close)
            return
        v = self._by_node.get(id(m.node))
        if v is None:
            v = self._vertex(m)
        if result == b"ok" and vstatus == "completed" and not m.timed_out:
            v.outcomes[0] += 1  # the common case
        else:
            o = "fenced" if result == b"fenced" else outcome(vstatus, m.timed_out)
            v.outcomes[_OUTCOME_INDEX[o]] += 1
            if result == b"completed" or result == b"failed":
                self._run_finished(m.flow.name, result.decode())
        if m.kind == "n":
            v.duration.observe(time.perf_counter() - m.t0)

    def _vertex(self, m: Execution) -> _Vertex:
        # one _Vertex per (flow, name): the same name may be a node of several (sub)plans
        key = (m.flow.name, m.node.name)
        v = self._vertices.get(key)
        if v is None:
            v = self._vertices[key] = _Vertex()
        self._by_node[id(m.node)] = v  # plan nodes live as long as the worker
        return v

    def lease_lost(self, m: Execution) -> None:
        """``m``'s node was cancelled: its lease could not be kept (worker/housekeeping.py)."""
        v = self._by_node.get(id(m.node)) or self._vertex(m)
        v.outcomes[_OUTCOME_INDEX["lease_lost"]] += 1

    def dead_lettered(self, m: Execution) -> None:
        """The claim script dead-lettered ``m`` and that failed its run."""
        self._run_finished(m.flow.name, "failed")

    def _run_finished(self, flow: str, status: str) -> None:
        self._finished[(flow, status)] = self._finished.get((flow, status), 0) + 1

    def collect(self) -> Iterator[Metric]:
        executions = CounterMetricFamily(
            "aioflow_vertex_executions",
            "Vertex executions by outcome (completed, failed, retried, timed_out, fenced, "
            "cancelled, lease_lost).",
            labels=["flow", "vertex", "outcome"],
        )
        duration = HistogramMetricFamily(
            "aioflow_vertex_duration_seconds",
            "Time from the start of a vertex execution to its outcome.",
            labels=["flow", "vertex"],
        )
        for (flow, vertex), v in sorted(self._vertices.items()):
            for o, n in zip(OUTCOMES, v.outcomes, strict=True):
                executions.add_metric([flow, vertex, o], n)
            v.duration.add_to(duration, [flow, vertex])
        wait = HistogramMetricFamily(
            "aioflow_queue_wait_seconds",
            "Time a vertex message waited in its stream, from enqueued to started.",
            labels=["flow"],
        )
        for flow, h in sorted(self._waits.items()):
            h.add_to(wait, [flow])
        finished = CounterMetricFamily(
            "aioflow_runs_finished",
            "Runs that ended in this worker, by status (completed, failed).",
            labels=["flow", "status"],
        )
        for (flow, status), n in sorted(self._finished.items()):
            finished.add_metric([flow, status], n)
        inflight = GaugeMetricFamily(
            "aioflow_worker_inflight", "Vertex messages this worker is running."
        )
        inflight.add_metric([], self._inflight())
        full = CounterMetricFamily(
            "aioflow_worker_redis_full",
            "Calls of this worker that Redis refused at maxmemory (retried later).",
        )
        full.add_metric([], self.redis_full)
        yield from (executions, duration, wait, finished, inflight, full)


class GatewayMetrics:
    """What the gateway counts, and the Redis gauges it reads on each scrape."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.submitted = Counter(
            "aioflow_runs_submitted", "Runs created through this gateway.", ["flow"], registry=r
        )
        self.finished = Counter(
            "aioflow_runs_finished",
            "Runs that ended through this gateway (stopped).",
            ["flow", "status"],
            registry=r,
        )
        self.redis_full = Counter(
            "aioflow_gateway_redis_full",
            "Requests answered 503 redis_full: Redis refused a write at maxmemory.",
            registry=r,
        )
        labels = ["flow", "partition"]
        self.stream_length = Gauge(
            "aioflow_stream_length", "Entries in a flow partition's stream.", labels, registry=r
        )
        self.pending = Gauge(
            "aioflow_pending",
            "Messages delivered to a worker and not yet acknowledged.",
            labels,
            registry=r,
        )
        self.dead_letters = Gauge(
            "aioflow_dead_letters",
            "Entries in a flow partition's dead-letter stream.",
            labels,
            registry=r,
        )
        self.delayed = Gauge(
            "aioflow_delayed",
            "Messages waiting in the delayed set (retries, delayed starts).",
            labels,
            registry=r,
        )

    def on_submitted(self, flow: str) -> None:
        self.submitted.labels(flow).inc()


def response(registry: CollectorRegistry) -> web.Response:
    """The registry in the Prometheus text format."""
    resp = web.Response(body=generate_latest(registry))
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def serve(registry: CollectorRegistry, host: str, port: int) -> web.AppRunner:
    """Serve ``registry`` on ``http://host:port/metrics``; ``cleanup()`` the runner to stop."""

    async def handler(_: web.Request) -> web.Response:
        return response(registry)

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("metrics on http://%s:%d/metrics", host, port)
    return runner
