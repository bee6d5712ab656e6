"""Liveness and observability: ``GET /healthz``, ``aioflow worker --health``,
``GET /metrics``, and the refusal to run on a Redis that may evict keys."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

import aioflow
from aioflow.app import connect
from aioflow.core import codec
from aioflow.core.errors import ConfigError
from aioflow.gateway.routes import create_app
from aioflow.worker import health
from aioflow.worker.worker import check_server
from tests.engine_helpers import running
from tests.faultproxy import FaultProxy
from tests.helpers import RedisFactory, run_aioflow, wait_until

ROOT = Path(__file__).resolve().parents[2]
APP = "tests/apps/diamond_app.py:app"  # --health only reads the app's settings
T = 10.0
WORKERS = "af:workers"


def make_flow(name: str = "probe", partitions: int = 1) -> aioflow.Flow:
    flow = aioflow.Flow(name, partitions=partitions)

    @flow.node
    async def inc(x: int) -> int:
        return x + 1

    return flow


async def _health(url: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = await run_aioflow("worker", APP, "--health", "--redis-url", url)
    assert "Traceback" not in out + err, out + err
    report = json.loads(out)
    assert isinstance(report, dict), out
    return code, report, err


async def _json(resp: ClientResponse, status: int) -> Any:
    text = await resp.text()
    assert resp.status == status, (resp.status, text)
    assert resp.content_type == "application/json", text
    assert "Traceback" not in text
    return json.loads(text)


# -- GET /healthz -------------------------------------------------------------------------


async def test_healthz_ok_then_503_when_redis_stops(redis_factory: RedisFactory) -> None:
    server = redis_factory(appendonly=False)
    redis = connect(server.url)
    try:
        app = create_app(redis, flows=[make_flow()], settings=aioflow.Settings())
        async with TestClient(TestServer(app)) as http:
            assert await _json(await http.get("/healthz"), 200) == {"ok": True, "redis": True}
            assert (await _json(await http.get("/flows"), 200))["flows"][0]["name"] == "probe"

            server.stop()

            doc = await _json(await http.get("/healthz"), 503)
            assert doc["ok"] is False and doc["redis"] is False, doc
            # every endpoint that needs Redis answers 503 JSON, no stack trace
            for method, path in (
                ("GET", "/flows"),
                ("GET", "/metrics"),
                ("GET", "/dead-letters"),
                ("POST", "/flow/probe"),
            ):
                resp = await http.request(method, path, json=1 if method == "POST" else None)
                err = await _json(resp, 503)
                assert err["error"] == "redis_unavailable", (path, err)
                assert isinstance(err["detail"], str), err
    finally:
        await redis.aclose()


# -- aioflow worker --health --------------------------------------------------------------


async def test_health_cli_healthy_while_a_worker_reads(redis_url: str, redis: Redis) -> None:
    t0 = time.time()
    async with running([make_flow()], redis_url, visibility_timeout=0.3) as stack:
        assert await stack.client.execute("probe", 1, timeout=T) == 2
        name = stack.workers[0].consumer

        async def beat_after_a_read() -> bool:
            raw: Any = await redis.hget(WORKERS, name)
            if raw is None:
                return False
            doc = codec.loads(raw)
            return bool(doc["last_read"] >= t0 and doc["beat"] >= t0)

        await wait_until(beat_after_a_read, timeout=T, what="a heartbeat after a read")
        code, report, err = await _health(redis_url)
        assert code == 0, (report, err)
        assert report["healthy"] is True and report["redis"] is True, report
        mine = [w for w in report["workers"] if w["name"] == name]
        assert len(mine) == 1, report
        assert mine[0]["reading"] is True
        assert mine[0]["host"] == socket.gethostname()
        assert mine[0]["pid"] == os.getpid()


async def test_health_cli_unhealthy_when_no_worker_ever_ran(redis_url: str) -> None:
    code, report, _ = await _health(redis_url)
    assert code == 1
    assert report["redis"] is True
    assert report["healthy"] is False
    assert report["workers"] == []


async def test_health_cli_unhealthy_with_stale_or_foreign_heartbeats(
    redis_url: str, redis: Redis
) -> None:
    """A heartbeat of this host that is too old, or a fresh one of another host, is no
    proof that a worker here is alive."""
    now = time.time()
    stale = {
        "host": socket.gethostname(),
        "pid": 1,
        "last_read": now - 3600,
        "inflight": 0,
        "beat": now - 3600,
        "completed": 0,
    }
    foreign = {**stale, "host": socket.gethostname() + "-elsewhere", "last_read": now, "beat": now}
    await redis.hset(WORKERS, mapping={"stale": codec.dumps(stale), "far": codec.dumps(foreign)})
    code, report, _ = await _health(redis_url)
    assert code == 1, report
    assert report["redis"] is True and report["healthy"] is False
    assert [w["name"] for w in report["workers"]] == ["stale"]  # other hosts are not listed


async def test_health_cli_unhealthy_when_redis_is_down(redis_factory: RedisFactory) -> None:
    server = redis_factory(appendonly=False)
    url = server.url
    server.stop()
    code, report, _ = await _health(url)
    assert code == 1
    assert report["redis"] is False
    assert report["healthy"] is False


# -- GET /metrics -------------------------------------------------------------------------

GAUGES = ("aioflow_stream_length", "aioflow_pending", "aioflow_dead_letters", "aioflow_delayed")


async def test_metrics_match_redis(redis_url: str, redis: Redis) -> None:
    alpha = make_flow("alpha")
    beta = make_flow("beta", partitions=2)
    app = create_app(redis, flows=[alpha, beta], settings=aioflow.Settings())
    async with TestClient(TestServer(app)) as http, aioflow.Client(redis_url) as client:
        # alpha: 3 messages on the stream, 2 of them delivered and pending, 1 delayed run,
        # 2 dead letters; beta: 3 runs spread over its 2 partitions
        for i in range(3):
            await client.submit("alpha", i)
        await client.submit("alpha", 99, delay=60)
        await redis.xreadgroup("workers", "ghost", {"af:{alpha:0}:q": ">"}, count=2)
        for _ in range(2):
            await redis.xadd("af:{alpha:0}:dlq", {"id": "0-1", "r": "", "reason": "test"})
        for i in range(3):
            await client.submit("beta", i)

        resp = await http.get("/metrics")
        text = await resp.text()
        assert resp.status == 200, text
        assert resp.content_type == "text/plain", resp.content_type
        for g in GAUGES:
            assert f"# TYPE {g} gauge" in text, text
            assert f"# HELP {g} " in text, text
        values: dict[tuple[str, str, int], int] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in GAUGES:
                    assert set(sample.labels) == {"flow", "partition"}, sample
                    key = (sample.name, sample.labels["flow"], int(sample.labels["partition"]))
                    values[key] = int(sample.value)

        assert values[("aioflow_stream_length", "alpha", 0)] == 3
        assert values[("aioflow_pending", "alpha", 0)] == 2
        assert values[("aioflow_dead_letters", "alpha", 0)] == 2
        assert values[("aioflow_delayed", "alpha", 0)] == 1
        assert sum(values[("aioflow_stream_length", "beta", p)] for p in (0, 1)) == 3
        # every registered partition has every gauge, and each agrees with Redis
        expected: dict[tuple[str, str, int], int] = {}
        for flow, parts in (("alpha", 1), ("beta", 2)):
            for p in range(parts):
                tag = f"af:{{{flow}:{p}}}"
                pending: Any = await redis.xpending(f"{tag}:q", "workers")
                expected[("aioflow_stream_length", flow, p)] = await redis.xlen(f"{tag}:q")
                expected[("aioflow_pending", flow, p)] = pending["pending"]
                expected[("aioflow_dead_letters", flow, p)] = await redis.xlen(f"{tag}:dlq")
                expected[("aioflow_delayed", flow, p)] = await redis.zcard(f"{tag}:z")
        assert values == expected


# -- the server check ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        "allkeys-lru",
        "allkeys-lfu",
        "allkeys-random",
        "volatile-lru",
        "volatile-lfu",
        "volatile-random",
        "volatile-ttl",
    ],
)
def test_check_server_refuses_evicting_policies(policy: str) -> None:
    with pytest.raises(ConfigError, match="noeviction") as info:
        check_server({"maxmemory-policy": policy})
    assert policy in str(info.value)


def test_check_server_accepts_noeviction() -> None:
    check_server({"maxmemory-policy": "noeviction"})
    check_server({})  # CONFIG GET disabled (managed Redis): nothing to check


async def test_worker_refuses_an_evicting_redis(redis_factory: RedisFactory) -> None:
    server = redis_factory(appendonly=False, extra_args=["--maxmemory-policy", "volatile-lru"])
    redis = connect(server.url)
    try:
        assert (await redis.config_get("maxmemory-policy"))["maxmemory-policy"] == "volatile-lru"
        w = aioflow.Worker([make_flow()], redis, settings=aioflow.Settings(redis_url=server.url))
        with pytest.raises(ConfigError, match="noeviction"):
            await w.prepare()
        # run() does not retry a refused server: it fails at once
        with pytest.raises(ConfigError, match="noeviction"):
            await asyncio.wait_for(w.run(), T)
        # nothing was registered on that server
        assert await redis.hlen("af:flows") == 0
        assert await redis.exists("af:{probe:0}:q") == 0

        # the command refuses too, and says why (exit 2)
        code, out, err = await run_aioflow("worker", APP, "--redis-url", server.url)
        assert code == 2, (out, err)
        assert "noeviction" in err and "Traceback" not in err, err
    finally:
        await redis.aclose()


async def test_worker_prepares_on_a_noeviction_redis(redis_url: str, redis: Redis) -> None:
    w = aioflow.Worker([make_flow()], redis, settings=aioflow.Settings(redis_url=redis_url))
    await w.prepare()
    assert await redis.hexists("af:flows", "probe")


# -- the health rule ----------------------------------------------------------------------


def test_health_window_covers_a_blocking_read_and_slow_housekeeping() -> None:
    s = aioflow.Settings(visibility_timeout=30.0, redis_timeout=10.0)
    # beats every 5 s; two Redis timeouts (20 s) is longer; plus a 1 s read and 3 s grace
    assert health.window(s) == 24.0
    assert health.window(aioflow.Settings(visibility_timeout=0.3, redis_timeout=0.5)) == 5.0


def test_health_judge() -> None:
    now = 1000.0
    base = {"beat": now - 1, "last_read": now - 1, "inflight": 0, "concurrency": 4, "window": 5}
    assert health.judge(base, now, 99.0) == (True, "")
    # idle: an empty read came back lately
    assert health.judge({**base, "inflight": 0}, now, 99.0)[0] is True
    # reads stuck while the heartbeat goes on
    ok, why = health.judge({**base, "last_read": now - 6}, now, 99.0)
    assert not ok and "no read came back" in why
    # ... unless every slot is busy: a full worker reads nothing
    assert health.judge({**base, "last_read": now - 60, "inflight": 4}, now, 99.0)[0] is True
    # no heartbeat within the window
    ok, why = health.judge({**base, "beat": now - 6}, now, 99.0)
    assert not ok and "no heartbeat" in why
    # an old heartbeat without a window of its own is judged by the prober's
    old = {k: v for k, v in base.items() if k != "window"}
    assert health.judge({**old, "beat": now - 6}, now, 10.0)[0] is True


async def test_health_cli_healthy_for_a_worker_idle_past_the_window(
    redis_url: str, redis: Redis
) -> None:
    """A live worker that has had nothing to do for longer than the window is healthy:
    its empty blocking reads are reads."""
    settings: dict[str, Any] = {"visibility_timeout": 0.3, "redis_timeout": 0.5}
    win = health.window(aioflow.Settings(**settings))
    async with running([make_flow()], redis_url, **settings) as stack:
        name = stack.workers[0].consumer
        started = time.time()

        async def idle_past_the_window() -> bool:
            raw: Any = await redis.hget(WORKERS, name)
            return raw is not None and codec.loads(raw)["beat"] - started > win + 0.5

        await wait_until(idle_past_the_window, timeout=win + 10, what="a beat past the window")
        assert stack.workers[0].completed == 0  # idle all along
        code, report, err = await _health(redis_url)
        assert code == 0, (report, err)
        mine = [w for w in report["workers"] if w["name"] == name]
        assert mine and mine[0]["reading"] is True, report


async def test_health_cli_unhealthy_when_the_worker_process_is_gone(
    redis_url: str, redis: Redis
) -> None:
    """A fresh heartbeat is no proof when the process that wrote it has exited."""
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()
    now = time.time()
    doc = {
        "host": socket.gethostname(),
        "pid": proc.pid,
        "last_read": now,
        "inflight": 0,
        "concurrency": 10,
        "beat": now,
        "window": 60,
        "completed": 0,
    }
    await redis.hset(WORKERS, "gone", codec.dumps(doc))
    code, report, _ = await _health(redis_url)
    assert code == 1, report
    assert report["workers"][0]["why"] == f"process {proc.pid} is gone"


async def test_health_cli_unhealthy_when_the_workers_link_stalls(
    redis_url: str, redis: Redis
) -> None:
    """A worker whose connections stall (no reset) reads nothing and cannot beat: the
    probe, over its own link, says unhealthy within the window."""
    settings: dict[str, Any] = {"visibility_timeout": 0.3, "redis_timeout": 0.5}
    win = health.window(aioflow.Settings(**settings))
    async with FaultProxy.to(redis_url) as proxy:
        async with running([make_flow()], proxy.url, **settings) as stack:
            name = stack.workers[0].consumer

            async def healthy() -> bool:
                return (await _health(redis_url))[0] == 0

            await wait_until(healthy, timeout=T, what="a healthy worker")
            proxy.stall()
            proxy.stall_new()
            stalled_at = time.monotonic()

            async def unhealthy() -> bool:
                return (await _health(redis_url))[0] == 1

            await wait_until(unhealthy, timeout=win + 10, what="the probe to notice")
            assert time.monotonic() - stalled_at > win - 2  # not before the window
            code, report, _ = await _health(redis_url)
            mine = [w for w in report["workers"] if w["name"] == name]
            # its last heartbeat, and the last read it reports, both age past the window
            assert mine and mine[0]["reading"] is False, report
            assert mine[0]["why"].startswith(("no heartbeat", "no read came back")), mine
            proxy.heal(flush=False)  # lets the worker stop quickly
