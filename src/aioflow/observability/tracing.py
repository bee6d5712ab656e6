"""OpenTelemetry tracing: one span per run and one per vertex execution.

Off unless ``Settings.tracing`` (``AIOFLOW_TRACING=1``) is set, so the hot path
pays nothing by default. The run's W3C ``traceparent`` is stored on the run
when it is submitted; every vertex span is its child, so a run is one trace
across the gateway, the client and every worker. With ``AIOFLOW_TRACING=1``
aioflow only uses the API: configure a TracerProvider and exporter in your
process (the OpenTelemetry SDK is installed). ``console`` prints spans;
``otlp`` exports them over OTLP/HTTP (protobuf) in batches, configured by the
standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``, which defaults to
``aioflow-gateway``, ``aioflow-worker`` or ``aioflow-client`` after the
process's role), and flushed when the worker, gateway or client closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, Status, StatusCode

from aioflow.core.errors import ConfigError

_provider: Any = None  # the SDK provider aioflow installed (console, otlp), if any


def configure(mode: str | None, role: str = "client") -> bool:
    """Enable tracing for ``mode`` ``"1"``/``"true"`` (use the process's provider),
    ``"console"`` (install an SDK provider printing spans) or ``"otlp"`` (install one
    exporting over OTLP/HTTP). ``role`` (``gateway``, ``worker``, ``client``) names the
    default service. Answers whether tracing is on; raises :class:`ConfigError` for
    ``otlp`` without the ``aioflow[otlp]`` extra, or for an unknown mode."""
    global _provider
    if not mode or mode.lower() in ("0", "false", "no", "off"):
        return False
    mode = mode.lower()
    if mode in ("1", "true", "yes", "on"):
        return True
    if mode not in ("console", "otlp"):
        raise ConfigError(f"tracing must be 1, console or otlp, got {mode!r}")
    if _provider is not None:
        return True
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    name = os.environ.get("OTEL_SERVICE_NAME") or f"aioflow-{role}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if mode == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError(
                "tracing='otlp' needs the OTLP exporter: install aioflow[otlp]"
            ) from None
        # endpoint, headers, timeout, compression: from the OTEL_EXPORTER_OTLP_* variables
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    return True


async def flush() -> None:
    """Export the spans still buffered (when a worker, gateway or client closes), in a
    thread: the exporter blocks, and the receiver may live in this event loop."""
    if _provider is not None:
        await asyncio.to_thread(_provider.force_flush)


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


def retried(error: BaseException, attempt: int, delay: float) -> None:
    """Record on the current vertex span that its attempt failed and will be retried."""
    trace.get_current_span().add_event(
        "retry",
        {
            "exception.type": type(error).__name__,
            "exception.message": str(error),
            "aioflow.attempt": attempt,
            "aioflow.retry_delay": delay,
        },
    )


def set_outcome(span: Span, outcome: str) -> None:
    span.set_attribute("aioflow.outcome", outcome)
