"""OTLP export: a gateway and two worker processes export to a receiver on loopback;
each run is one trace holding its run span and every vertex span."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from aioflow.core.errors import ConfigError
from aioflow.observability import tracing
from aioflow.store.redis_server import free_port
from tests.helpers import wait_until
from tests.otlp_receiver import Receiver
from tests.procs import Procs, clean_env

APP = "tests.apps.traced_app:app"


async def _readers(redis: Redis, n: int) -> bool:
    clients = await redis.client_list()
    return sum(1 for c in clients if c.get("cmd") == "xreadgroup") >= n


async def _healthy(http: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with http.get(f"{base}/healthz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


@pytest.mark.slow
async def test_one_trace_per_run_across_processes(
    redis_url: str, redis: Redis, procs: Procs, receiver: tuple[Receiver, int]
) -> None:
    rec, rport = receiver
    otel = {
        "AIOFLOW_TRACING": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{rport}",
        # nothing is exported before shutdown: what arrives was flushed by the stop
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs.aioflow(
        "gateway", "serve", APP, "--redis-url", redis_url, "--port", str(port), env=clean_env(otel)
    )
    for w in ("w1", "w2"):
        # one slot each: the second worker must take what the first cannot
        env = clean_env({**otel, "OTEL_RESOURCE_ATTRIBUTES": f"test.worker={w}"})
        procs.aioflow(w, "worker", APP, "--redis-url", redis_url, "--concurrency", "1", env=env)

    inputs: list[dict[str, Any]] = [{"n": i} for i in range(6)]
    inputs += [{"flaky": True}, {"fail": True}]
    async with aiohttp.ClientSession() as http:
        await wait_until(lambda: _healthy(http, base), timeout=30, what="gateway /healthz")
        await wait_until(lambda: _readers(redis, 2), timeout=30, what="2 workers reading")

        async def post(data: dict[str, Any]) -> tuple[int, str]:
            async with http.post(f"{base}/flow/traced?wait=20", json=data) as resp:
                return resp.status, resp.headers["X-Run-Id"]

        answers = await asyncio.gather(*(post(d) for d in inputs))
    assert [s for s, _ in answers] == [200] * 7 + [500]
    procs.check_alive()
    assert rec.spans == []  # batched: nothing sent yet
    # in a thread: the receiver in this event loop must answer the flushes meanwhile
    await asyncio.to_thread(procs.terminate)
    for name in procs.procs:
        assert "Failed to export" not in procs.output(name), procs.output(name)
    assert rec.requests >= 3  # gateway, w1, w2

    runs = {sp.attributes["aioflow.run_id"]: sp for sp in rec.spans if sp.name == "run traced"}
    assert set(runs) == {rid for _, rid in answers}
    assert {sp.service for sp in runs.values()} == {"aioflow-gateway"}
    assert len({sp.trace_id for sp in runs.values()}) == len(runs)  # one trace per run
    vertex_spans = [sp for sp in rec.spans if sp.name.startswith("vertex ")]
    assert {sp.service for sp in vertex_spans} == {"aioflow-worker"}
    workers = {sp.resource.get("test.worker") for sp in vertex_spans}
    assert workers == {"w1", "w2"}, "both worker processes export"
    for (_, rid), data in zip(answers, inputs, strict=True):
        run = runs[rid]
        mine = [sp for sp in vertex_spans if sp.trace_id == run.trace_id]
        assert all(sp.parent_id == run.span_id for sp in mine)
        assert all(sp.attributes["aioflow.run_id"] == rid for sp in mine)
        assert all(sp.attributes["aioflow.flow"] == "traced" for sp in mine)
        at = [(sp.attributes["aioflow.vertex"], sp.attributes["aioflow.attempt"]) for sp in mine]
        by = dict(zip(at, mine, strict=True))
        want = {("a", 1), ("b", 1), ("c", 1), ("d", 1)} | ({("b", 2)} if "flaky" in data else set())
        assert set(by) == want, rid
        if "flaky" in data:
            first = by[("b", 1)]
            assert first.attributes["aioflow.outcome"] == "retried"
            assert [name for name, _ in first.events] == ["retry"]
            assert first.events[0][1]["exception.type"] == "RuntimeError"
            assert not first.error  # a retried attempt does not fail the run
            assert by[("b", 2)].attributes["aioflow.outcome"] == "completed"
        if "fail" in data:
            assert by[("d", 1)].error
            assert by[("d", 1)].attributes["aioflow.outcome"] == "failed"
        else:
            assert all(not sp.error for sp in mine)
            assert by[("d", 1)].attributes["aioflow.outcome"] == "completed"


def test_otlp_without_the_extra_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(tracing, "_provider", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ConfigError, match=r"install aioflow\[otlp\]"):
        tracing.configure("otlp", role="worker")
    with pytest.raises(ConfigError, match="tracing must be"):
        tracing.configure("jaeger")
