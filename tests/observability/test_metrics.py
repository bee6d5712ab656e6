"""Prometheus metrics: worker counters equal the executions a test caused."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

import aioflow
from aioflow.gateway.routes import create_app
from aioflow.store.redis_server import free_port
from tests.engine_helpers import running
from tests.helpers import wait_until

T = 10.0


def _flows(attempts: dict[str, int]) -> list[aioflow.Flow]:
    ok = aioflow.Flow("m-ok")

    @ok.node
    async def first(x: int) -> int:
        return x + 1

    @ok.node(after=first, retries=aioflow.RetryPolicy(retries=2, backoff=0.01, jitter=0))
    async def flaky(x: int) -> int:
        attempts["flaky"] = attempts.get("flaky", 0) + 1
        if attempts["flaky"] == 1:
            raise RuntimeError("first attempt fails")
        return x * 10

    each = ok.foreach("each", lambda x: {str(i): i for i in range(3)}, after=flaky)
    each.node("item", lambda i: i * 2)

    bad = aioflow.Flow("m-bad")

    @bad.node
    async def boom(x: int) -> int:
        raise ValueError("always")

    slow = aioflow.Flow("m-slow")

    @slow.node(timeout=0.05)
    async def sleepy(x: int) -> int:
        await asyncio.sleep(5)
        return x

    return [ok, bad, slow]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_worker_counters_equal_executions(redis_url: str) -> None:
    attempts: dict[str, int] = {}
    port = free_port()
    async with running(_flows(attempts), redis_url, metrics_port=port) as s:
        c = s.client
        assert await c.execute("m-ok", 1, timeout=T) == {"0": 0, "1": 2, "2": 4}
        assert await c.execute("m-ok", 2, timeout=T) == {"0": 0, "1": 2, "2": 4}
        for name in ("m-bad", "m-slow"):
            with pytest.raises(aioflow.RunFailed):
                await c.execute(name, 0, timeout=T)
        w = s.workers[0]
        await wait_until(lambda: w._inflight == {}, timeout=T, what="idle worker")

        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                assert resp.content_type == "text/plain"
                text = await resp.text()
        got = _samples(text)

    def executions(flow: str, vertex: str, outcome: str) -> float:
        key = (flow, vertex, outcome)
        labels = tuple(sorted(zip(("flow", "vertex", "outcome"), key, strict=True)))
        return got.get(("aioflow_vertex_executions_total", labels), 0.0)

    assert executions("m-ok", "first", "completed") == 2
    assert executions("m-ok", "flaky", "retried") == 1
    assert executions("m-ok", "flaky", "completed") == 2
    # one label per definition vertex, whatever the foreach keys: 3 items x 2 runs
    assert executions("m-ok", "item", "completed") == 6
    assert executions("m-ok", "each", "completed") == 2
    vertices = {
        dict(lbl)["vertex"] for name, lbl in got if name == "aioflow_vertex_executions_total"
    }
    assert vertices == {"first", "flaky", "each", "item", "boom", "sleepy"}
    assert executions("m-bad", "boom", "failed") == 1
    assert executions("m-slow", "sleepy", "timed_out") == 1
    assert executions("m-slow", "sleepy", "failed") == 0
    finished = {
        (dict(lbl)["flow"], dict(lbl)["status"]): v
        for (name, lbl), v in got.items()
        if name == "aioflow_runs_finished_total"
    }
    assert finished == {
        ("m-ok", "completed"): 2.0,
        ("m-bad", "failed"): 1.0,
        ("m-slow", "failed"): 1.0,
    }
    # every start waited in the queue once: 2 first, 3 flaky, 6 items, 2 opens and
    # 2 closes of the foreach
    wait = got[("aioflow_queue_wait_seconds_count", (("flow", "m-ok"),))]
    assert wait == 15
    assert got[("aioflow_worker_inflight", ())] == 0.0
    durations = {
        dict(lbl)["vertex"]: v
        for (name, lbl), v in got.items()
        if name == "aioflow_vertex_duration_seconds_count" and dict(lbl)["flow"] == "m-ok"
    }
    assert durations["flaky"] == 3 and durations["item"] == 6


async def test_stop_counts_cancelled_and_gateway_counts(redis_url: str) -> None:
    """A stopped run's running node is ``cancelled``; the gateway counts the runs it
    created and stopped, and renders its Redis gauges."""
    started = asyncio.Event()
    calls: list[Any] = []
    flow = aioflow.Flow("m-stop")

    @flow.node
    async def wait_forever(x: Any) -> None:
        calls.append(x)
        started.set()
        await asyncio.sleep(30)

    port = free_port()
    async with running([flow], redis_url) as s:
        runner = web.AppRunner(create_app(s.redis, flows=[flow]), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{base}/flow/m-stop", json=1) as resp:
                    rid = (await resp.json())["run_id"]
                await asyncio.wait_for(started.wait(), T)
                # the same caller-chosen id twice is one run (stopped before it starts)
                for _ in range(2):
                    async with http.post(
                        f"{base}/flow/m-stop", json=2, headers={"X-Run-Id": "mine"}
                    ) as resp:
                        assert resp.status == 202
                        mine = (await resp.json())["run_id"]
                for run_id in (rid, mine):
                    async with http.post(f"{base}/flow/m-stop/run/{run_id}/stop") as resp:
                        assert resp.status == 200, await resp.text()
                async with http.get(f"{base}/metrics") as resp:
                    got = _samples(await resp.text())
        finally:
            await runner.cleanup()
        w = s.workers[0]
        await wait_until(lambda: w._inflight == {}, timeout=T, what="nodes cancelled")
        labels = {"flow": "m-stop", "vertex": "wait_forever", "outcome": "cancelled"}
        assert w.metrics.registry.get_sample_value(
            "aioflow_vertex_executions_total", labels
        ) == len(calls)
    assert got[("aioflow_runs_submitted_total", (("flow", "m-stop"),))] == 2
    stopped = (("flow", "m-stop"), ("status", "stopped"))
    assert got[("aioflow_runs_finished_total", stopped)] == 2
    assert ("aioflow_stream_length", (("flow", "m-stop"), ("partition", "0"))) in got
    assert ("aioflow_pending", (("flow", "m-stop"), ("partition", "0"))) in got
