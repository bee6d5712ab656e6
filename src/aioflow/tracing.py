"""OpenTelemetry tracing: one span per run and one per vertex execution.

Off unless ``Settings.tracing`` (``AIOFLOW_TRACING=1``) is set, so the hot path
pays nothing by default. The run's W3C ``traceparent`` is stored on the run
when it is submitted; every vertex span is its child, so a run is one trace
across the gateway, the client and every worker. aioflow only uses the API:
configure a TracerProvider and exporter in your process (the OpenTelemetry
SDK is installed) or set ``AIOFLOW_TRACING=console`` to print spans.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, Status, StatusCode

_configured = False


def configure(mode: str | None) -> bool:
    """Enable tracing for ``mode`` ``"1"``/``"true"`` (use the process's provider) or
    ``"console"`` (install an SDK provider printing spans). Answers whether it is on."""
    global _configured
    if not mode or mode.lower() in ("0", "false", "no", "off"):
        return False
    if mode.lower() == "console" and not _configured:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": "aioflow"}))
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        trace.set_tracer_provider(provider)
        _configured = True
    return True


def _tracer() -> trace.Tracer:
    return trace.get_tracer("aioflow")


@contextlib.contextmanager
def run_span(flow: str, run_id: str) -> Iterator[str]:
    """A span for submitting a run; yields the traceparent to store on the run."""
    with _tracer().start_as_current_span(
        f"run {flow}", kind=trace.SpanKind.PRODUCER, attributes={"aioflow.run_id": run_id}
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier.get("traceparent", "")


@contextlib.contextmanager
def vertex_span(
    traceparent: bytes | None, flow: str, run_id: str, vertex: str, attempt: int
) -> Iterator[Span]:
    """A span around one vertex execution, child of the run's span."""
    ctx = propagate.extract({"traceparent": traceparent.decode()} if traceparent else {})
    with _tracer().start_as_current_span(
        f"vertex {vertex}",
        context=ctx,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "aioflow.flow": flow,
            "aioflow.run_id": run_id,
            "aioflow.vertex": vertex,
            "aioflow.attempt": attempt,
        },
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        yield span


def mark_error(error: BaseException) -> None:
    """Record a failed vertex attempt on the current vertex span."""
    span = trace.get_current_span()
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
