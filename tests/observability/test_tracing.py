"""Tracing: a run is one trace, one span per run and per vertex execution."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import aioflow
from tests.engine_helpers import running

EXPORTER = InMemorySpanExporter()


def setup_module() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


async def test_run_is_one_trace(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    flow = aioflow.Flow("traced")

    @flow.node
    async def a(x: int) -> int:
        return x + 1

    @flow.node(after=a)
    async def b(x: int) -> int:
        if x == 2:
            raise ValueError("boom")
        return x

    monkeypatch.setenv("AIOFLOW_TRACING", "1")  # the client reads its settings from the env
    async with running([flow], redis_url, tracing="1") as s:
        assert await s.client.execute("traced", 5, timeout=10) == 6
        rid = await s.client.submit("traced", 1)
        with pytest.raises(aioflow.RunFailed):
            await s.client.result(rid, timeout=10)
    spans = EXPORTER.get_finished_spans()
    runs = [sp for sp in spans if sp.name == "run traced"]
    vertices = [sp for sp in spans if sp.name.startswith("vertex ")]
    assert len(runs) == 2
    assert sorted(sp.name for sp in vertices) == ["vertex a", "vertex a", "vertex b", "vertex b"]
    for run in runs:
        tid = run.context.trace_id
        mine = [sp for sp in vertices if sp.context.trace_id == tid]
        assert len(mine) == 2
        assert all(
            sp.parent is not None and sp.parent.span_id == run.context.span_id for sp in mine
        )
    failed = [sp for sp in vertices if not sp.status.is_ok]
    assert len(failed) == 1 and failed[0].name == "vertex b"
