"""aioflow on a real Redis Cluster: the same URL of any node works, keys are routed by
their slot, runs spread over every master, and no raw cluster error reaches a user."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

import aioflow
from aioflow.engine.engine import register
from aioflow.gateway.routes import create_app
from aioflow.redis_cluster import LocalCluster
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.redis_server import free_port
from aioflow.store.topology import Router, command_key, crc16, key_slot, lean
from tests.engine_helpers import running
from tests.helpers import run_aioflow, sync_cluster, wait_until
from tests.procs import Procs, clean_env


def test_crc16_is_redis_clusters_checksum() -> None:
    # the reference value of the Redis Cluster specification
    assert crc16(b"123456789") == 0x31C3


@pytest.mark.parametrize(
    ("key", "same_as"),
    [
        ("af:{kyc:3}:q", "kyc:3"),
        ("af:{kyc:3}:r:abc", "kyc:3"),
        ("{}x", "{}x"),  # an empty tag is no tag
        ("a{b", "a{b"),
        ("x{y}{z}", "y"),
    ],
)
def test_key_slot_uses_the_hash_tag(key: str, same_as: str) -> None:
    assert key_slot(key) == key_slot(same_as)


def test_command_key_finds_the_routing_key() -> None:
    assert command_key(("EVALSHA", "sha", 1, "af:{f:0}:q", "x")) == "af:{f:0}:q"
    assert command_key(("EVALSHA", "sha", 0)) is None
    assert command_key(("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "STREAMS", "s1", ">")) == "s1"
    assert command_key(("HMGET", "k", "a")) == "k"
    assert command_key(("PING",)) is None


def test_key_slot_agrees_with_the_server(redis_cluster: LocalCluster) -> None:
    keys = ["af:{hello:0}:q", "af:{hello:1}:r:x", "plain", os.urandom(8).hex()]
    with sync_cluster(redis_cluster.url) as r:
        for key in keys:
            assert key_slot(key) == r.cluster_keyslot(key)


async def test_router_finds_the_cluster_from_any_node(redis_cluster: LocalCluster) -> None:
    for url in redis_cluster.urls[:3]:
        client = aioredis.Redis.from_url(url)
        router = lean(client)
        assert isinstance(router, Router)
        try:
            await router.start()
            assert router.cluster
            assert len(router.masters) == 3
            groups = router.group(f"{{k:{i}}}" for i in range(64))
            assert len(groups) == 3  # 64 slots spread over the three masters
        finally:
            await router.aclose()
            await client.aclose()


def _hello() -> aioflow.Flow:
    flow = aioflow.Flow("hello")  # partitions="auto"

    @flow.node
    async def greet(name: str) -> str:
        return f"hello, {name}"

    @flow.node(after=greet)
    async def shout(text: str) -> str:
        return text.upper()

    return flow


async def test_auto_partitions_reach_every_master(cluster_url: str) -> None:
    flow = _hello()
    async with running([flow], cluster_url) as s:
        ids = await asyncio.gather(*(s.client.submit(flow, str(i)) for i in range(60)))
        results = await asyncio.gather(*(s.client.result(i, timeout=20) for i in ids))
        assert results == [f"HELLO, {i}" for i in range(60)]
        info = await s.client.engine.flow_info("hello")
        assert info.partitions >= 3  # one per master at least
        router = s.client.engine.fast
        assert isinstance(router, Router)
        used = {router.addr_for(RunId.parse(i).stream) for i in ids}
        assert used == set(router.masters)  # the runs touched every master


async def test_worker_and_client_on_different_nodes(redis_cluster: LocalCluster) -> None:
    redis_cluster.flushall()
    flow = _hello()
    worker_url, client_url = redis_cluster.urls[0], redis_cluster.urls[-1]
    async with running([flow], worker_url) as s, aioflow.Client(client_url) as other:
        assert await other.execute("hello", "x", timeout=20) == "HELLO, X"
        assert await s.client.execute("hello", "y", timeout=20) == "HELLO, Y"
        page, _ = await other.runs("hello")
        assert {st.result for st in page} == {"HELLO, X", "HELLO, Y"}


async def test_errors_are_aioflow_errors_not_redirections(cluster_url: str) -> None:
    async with aioflow.Client(cluster_url) as client:
        with pytest.raises(aioflow.UnknownFlow):
            await client.submit("nobody-registered-this", 1)
        with pytest.raises(aioflow.RunNotFound):
            await client.state("hello.7.doesnotexist")


async def test_registry_heartbeats_and_listing_on_a_cluster(cluster_url: str) -> None:
    flow = _hello()
    async with running([flow], cluster_url, visibility_timeout=0.3) as s:
        await s.client.execute(flow, "a", timeout=20)
        with sync_cluster(cluster_url) as r:
            assert r.hget("af:flows", "hello") is not None
            await wait_until(lambda: bool(r.hgetall("af:workers")), what="a heartbeat")


@pytest.mark.slow
async def test_gateway_and_two_worker_processes_on_a_cluster(
    redis_cluster: LocalCluster, procs: Procs
) -> None:
    """The issue's first try: `aioflow worker ... --redis-url <a cluster node>` and
    `aioflow serve`, each given a different node, run the flow over HTTP and ?wait=."""
    redis_cluster.flushall()
    urls = redis_cluster.urls
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = "tests.apps.diamond_app:app"
    env = clean_env()
    procs.aioflow("serve", "serve", app, "--redis-url", urls[0], "--port", str(port), env=env)
    w1 = procs.aioflow("worker1", "worker", app, "--redis-url", urls[1], env=env)
    w2 = procs.aioflow("worker2", "worker", app, "--redis-url", urls[2], env=env)
    with sync_cluster(urls[0]) as r:
        await wait_until(lambda: len(r.hgetall("af:workers")) >= 2, timeout=30, what="2 workers")
    async with aiohttp.ClientSession() as session:
        sem = asyncio.Semaphore(20)

        async def post(n: int) -> Any:
            async with sem, session.post(f"{base}/flow/diamond?wait=30", json={"n": n}) as resp:
                assert resp.status == 200, await resp.text()
                return await resp.json()

        outs = await asyncio.gather(*(post(n) for n in range(100)))
        assert [o["sum"] for o in outs] == [n * 5 for n in range(100)]
        pids = {p for o in outs for p in o["pids"]}
        assert pids <= {w1.pid, w2.pid}
    for name, p in procs.procs.items():
        assert p.poll() is None, f"{name} exited:\n{procs.output(name)}"
        p.send_signal(signal.SIGTERM)
    for name, p in procs.procs.items():
        assert p.wait(timeout=30) == 0, f"{name}:\n{procs.output(name)}"


async def test_dead_letter_and_replay_on_a_cluster(cluster_url: str) -> None:
    flow = aioflow.Flow("dlc", partitions=6)

    @flow.node
    async def double(x: int) -> int:
        return x * 2

    async with aioflow.Client(cluster_url) as client:
        await client.engine.start()
        await register(client.engine.redis, [flow], fast=client.engine.fast)
        run_id = await client.submit("dlc", 21)
        rid = RunId.parse(run_id)
        r = client.engine.redis
        # a ghost consumer takes the message and claims it again: 3 deliveries
        got: Any = await r.xreadgroup(keys.GROUP, "ghost", {rid.stream: ">"}, count=1)
        mid = got[0][1][0][0]
        for _ in range(2):
            await r.xclaim(rid.stream, keys.GROUP, "ghost", 0, [mid])
        async with running([flow], cluster_url, max_deliveries=2, visibility_timeout=0.2):
            with pytest.raises(aioflow.RunFailed) as info:
                await client.result(run_id, timeout=20)
            assert info.value.error_type == "DeadLetter"
            letters = await client.dead_letters()
            assert [d["run_id"] for d in letters] == [run_id]
            assert await client.replay(letters[0]["id"]) == run_id
            assert await client.result(run_id, timeout=20) == 42
            assert await client.dead_letters() == []


async def test_stop_reaches_the_node_and_metrics_cover_every_partition(cluster_url: str) -> None:
    flow = aioflow.Flow("stopc")
    started, cancelled = asyncio.Event(), asyncio.Event()

    @flow.node
    async def forever(x: int) -> int:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return x

    async with running([flow], cluster_url) as s:
        run_id = await s.client.submit(flow, 1)
        await asyncio.wait_for(started.wait(), 20)
        assert await s.client.stop(run_id) is aioflow.Status.STOPPED
        await asyncio.wait_for(cancelled.wait(), 20)  # the control channel on a cluster
        with pytest.raises(aioflow.RunStopped):
            await s.client.result(run_id, timeout=5)
        app = create_app(s.redis)
        async with TestClient(TestServer(app)) as http:
            resp = await http.get("/metrics")
            assert resp.status == 200
            text = await resp.text()
        parts = (await s.client.engine.flow_info("stopc")).partitions
        for p in range(parts):
            assert f'aioflow_stream_length{{flow="stopc",partition="{p}"}}' in text


async def test_worker_health_cli_on_a_cluster(cluster_url: str) -> None:
    flow = _hello()
    async with running([flow], cluster_url, visibility_timeout=0.3) as s:
        await s.client.execute(flow, "h", timeout=20)
        code, out, err = await run_aioflow(
            "worker", "examples/hello.py:app", "--health", "--redis-url", cluster_url
        )
        assert code == 0, out + err
        assert '"healthy":true' in out.replace(" ", "")
        code, out, err = await run_aioflow("run", "state", "--redis-url", cluster_url, "x.0.y")
        assert code == 2 and "not found" in err  # an aioflow error, not a redirection
