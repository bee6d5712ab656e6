"""Prometheus metrics of a worker and of the gateway (``prometheus_client``).

Each :class:`WorkerMetrics` / :class:`GatewayMetrics` owns its own
``CollectorRegistry`` rather than the process-global default, so two workers in
one process (tests, ``aioflow dev``) count apart. Workers serve theirs with
:func:`serve` on ``metrics_port``; the gateway renders its own on ``/metrics``.

The per-vertex hooks are one dictionary lookup and one or two ``inc``/``observe``
calls: the label children are cached per (flow, vertex). ``vertex`` is the
definition's node name, never a foreach address, so label cardinality stays
bounded by the definitions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .vertex import Msg

log = logging.getLogger("aioflow.metrics")

OUTCOMES = ("completed", "failed", "retried", "timed_out", "fenced", "cancelled")
# what the completion record's vertex status means as an execution outcome
_OUTCOME = {
    "completed": "completed",
    "failed": "failed",
    "retrying": "retried",
    "stopped": "cancelled",
    "queued": "cancelled",  # handed back by a draining worker
}


def outcome(vstatus: str, timed_out: bool) -> str:
    """The outcome of an execution whose completion record sets ``vstatus``."""
    if timed_out:
        return "timed_out"
    return _OUTCOME.get(vstatus, "opened" if vstatus == "running" else "completed")


_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300)


class _Vertex:
    """The label children of one (flow, vertex): resolved once, used per execution."""

    __slots__ = ("duration", "outcomes")

    def __init__(self, m: WorkerMetrics, flow: str, vertex: str) -> None:
        self.outcomes = {o: m.executions.labels(flow, vertex, o) for o in OUTCOMES}
        self.duration = m.duration.labels(flow, vertex)


class WorkerMetrics:
    """What one worker counts. ``inflight`` answers the number of running messages."""

    def __init__(self, inflight: Callable[[], int]) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.executions = Counter(
            "aioflow_vertex_executions",
            "Vertex executions by outcome (completed, failed, retried, timed_out, fenced, "
            "cancelled).",
            ["flow", "vertex", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "aioflow_vertex_duration_seconds",
            "Time from the start of a vertex execution to its outcome.",
            ["flow", "vertex"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "aioflow_queue_wait_seconds",
            "Time a vertex message waited in its stream, from enqueued to started.",
            ["flow"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.finished = Counter(
            "aioflow_runs_finished",
            "Runs that ended in this worker, by status (completed, failed).",
            ["flow", "status"],
            registry=r,
        )
        self.inflight = Gauge(
            "aioflow_worker_inflight", "Vertex messages this worker is running.", registry=r
        )
        self.inflight.set_function(lambda: float(inflight()))
        self._vertices: dict[tuple[str, str], _Vertex] = {}
        self._waits: dict[str, Histogram] = {}

    def started(self, m: Msg, now: float) -> None:
        """A message starts running: its queue wait, from the stream entry id (ms)."""
        m.t0 = time.perf_counter()
        h = self._waits.get(m.flow.name)
        if h is None:
            h = self._waits[m.flow.name] = self.queue_wait.labels(m.flow.name)
        h.observe(max(0.0, now - int(m.id[: m.id.index(b"-")]) / 1000))

    def done(self, m: Msg, result: bytes) -> None:
        """A completion record was applied; ``result`` is the complete script's answer."""
        vstatus = m.vstatus
        if m.kind == "f" or vstatus == "running":  # flow hooks; a group's open (counted at close)
            return
        key = (m.flow.name, m.node.name)
        v = self._vertices.get(key)
        if v is None:
            v = self._vertices[key] = _Vertex(self, *key)
        v.outcomes["fenced" if result == b"fenced" else outcome(vstatus, m.timed_out)].inc()
        if m.kind == "n":
            v.duration.observe(time.perf_counter() - m.t0)
        if result in (b"completed", b"failed"):
            self.finished.labels(m.flow.name, result.decode()).inc()

    def dead_lettered(self, m: Msg) -> None:
        """The claim script dead-lettered ``m`` and that failed its run."""
        self.finished.labels(m.flow.name, "failed").inc()


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
