"""Flow versions: content-hash versions, the registry, pinned runs across a rolling
deploy with real ``aioflow worker`` processes serving two versions of one flow."""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

import aioflow
from aioflow import versions
from aioflow.cli.command import _flows
from aioflow.engine.engine import register
from aioflow.gateway.routes import create_app
from aioflow.store import keys
from tests.apps import shop_v1, shop_v2
from tests.engine_helpers import running
from tests.helpers import wait_until
from tests.procs import Procs, clean_env

V1 = versions.version_of(shop_v1.shop)
V2 = versions.version_of(shop_v2.shop)
STREAM = keys.stream("shop", 0)


def _shape(*, retries: int = 0, nested: bool = False, order: int = 0) -> aioflow.Flow:
    f = aioflow.Flow("shape")

    async def a(x: Any) -> Any:
        return x

    async def b(x: Any) -> Any:
        return x

    names = [("a", a), ("b", b)] if order == 0 else [("b", b), ("a", a)]
    for name, fn in names:
        f.node(name, fn, retries=retries)
    inner = aioflow.Dag()
    inner.node("x", a)
    if nested:
        inner.node("y", b, after="x")
    f.subdag("sub", inner, after=["a", "b"])
    return f


def test_version_is_a_stable_hash_of_the_shape() -> None:
    v = versions.version_of(_shape())
    assert len(v) == 12 and int(v, 16) >= 0
    assert versions.version_of(_shape()) == v, "same shape, same version"
    assert versions.version_of(_shape(order=1)) == v, "declaration order is not shape"
    assert versions.version_of(_shape(retries=2)) != v, "retries change execution"
    assert versions.version_of(_shape(nested=True)) != v, "nested dags are part of it"
    assert V1 != V2
    f = _shape()
    before = versions.version_of(f)
    f.node("c", lambda x: x, after="sub")
    assert versions.version_of(f) != before, "a flow changed after hashing gets a new version"


async def test_registry_keeps_served_versions_and_drops_stale_ones(redis: Redis) -> None:
    await versions.register(redis, [shop_v1.shop], now=1000.0)
    await versions.register(redis, [shop_v2.shop], now=1010.0)
    await versions.register(redis, [shop_v1.shop], now=1011.0)  # v1 seen again
    doc = await versions.listing(redis, "shop", window=60, now=1012.0)
    assert doc["version"] == V2, "newest = registered last among those served"
    assert [v["version"] for v in doc["versions"]] == [V2, V1]
    assert doc["versions"][1]["last_seen"] == 1011.0
    assert doc["versions"][1]["registered"] == 1000.0, "re-registering keeps the first time"
    current = orjson.loads(await redis.hget(keys.FLOWS, "shop") or b"{}")
    assert current["version"] == V2
    assert await versions.prune(redis, retention=5, now=1012.0) == 0
    assert await versions.prune(redis, retention=5, now=1015.5) == 1
    doc = await versions.listing(redis, "shop", window=60, now=1015.5)
    assert [v["version"] for v in doc["versions"]] == [V1]
    assert await versions.prune(redis, retention=5, now=1100.0) == 1
    assert await redis.hlen(versions.fv_key("shop")) == 0
    assert await redis.hexists(keys.FLOWS, "shop"), "the flow itself stays known"


async def test_pins_and_state(redis_url: str, redis: Redis) -> None:
    await register(redis, [shop_v1.shop])
    async with aioflow.Client(redis_url) as client:
        rid = await client.submit("shop", {})
        assert (await client.state(rid)).version == V1
        rid2 = await client.submit(shop_v2.shop, {})  # registers v2, without serving it
        st = await client.state(rid2)
        assert st.version == V2
        assert orjson.loads(st.to_json())["version"] == V2
        assert await client.engine.pins.doc("shop", V2) is not None
        # v2 is registered but nobody serves it: by name still pins v1
        assert (await client.state(await client.submit("shop", {}))).version == V1
        with pytest.raises(aioflow.UnknownVersion):
            await client.engine.pin("shop", "0123456789ab")


def _rerun_flow(version: int, fail: list[bool]) -> aioflow.Flow:
    f = aioflow.Flow("rr")

    @f.node
    async def start(x: Any) -> list[str]:
        return [f"v{version}"]

    if version == 2:

        @f.node(after=start)
        async def check(x: list[str]) -> list[str]:
            return [*x, "check"]

    @f.node(after="check" if version == 2 else start)
    async def finish(x: list[str]) -> list[str]:
        if fail and fail.pop():
            raise RuntimeError("once")
        return [*x, "finish"]

    return f


def _traced_flow(version: int, ran: list[tuple[int, str]]) -> aioflow.Flow:
    """v1: a -> b; v2: a -> c -> b (b keeps its name); each call is logged in ``ran``."""
    f = aioflow.Flow("tw")

    @f.node
    async def a(x: int) -> list[str]:
        ran.append((version, "a"))
        return [f"v{version}:a"]

    if version == 2:

        @f.node(after=a)
        async def c(x: list[str]) -> list[str]:
            ran.append((version, "c"))
            return [*x, "v2:c"]

    @f.node(after="c" if version == 2 else a)
    async def b(x: list[str]) -> list[str]:
        ran.append((version, "b"))
        return [*x, f"v{version}:b"]

    return f


async def test_two_versions_in_one_process(any_redis_url: str) -> None:
    ran1: list[tuple[int, str]] = []
    ran2: list[tuple[int, str]] = []
    v1, v2 = _traced_flow(1, ran1), _traced_flow(2, ran2)
    async with running([v1], any_redis_url) as s1, running([v2], any_redis_url) as s2:
        runs = [(n % 2 + 1, await s1.client.submit(v1 if n % 2 == 0 else v2, n)) for n in range(40)]
        for version, rid in runs:
            want = ["v1:a", "v1:b"] if version == 1 else ["v2:a", "v2:c", "v2:b"]
            assert await s1.client.result(rid, timeout=20) == want
        w1, w2 = s1.workers[0].versions, s2.workers[0].versions
        assert w1.parked_count + w2.parked_count > 0, "no message reached the other worker"
        assert w1.adopted_count + w2.adopted_count > 0
        assert {v for v, _ in ran1} == {1} and {v for v, _ in ran2} == {2}
        assert len(ran1) == 40 and len(ran2) == 60, "each vertex ran once, on its version"


async def test_retry_and_replay_use_the_pinned_version(any_redis_url: str) -> None:
    fail = [True, True]
    v1, v2 = _rerun_flow(1, fail), _rerun_flow(2, [])
    async with running([v1], any_redis_url, max_deliveries=1) as stack:
        rid = await stack.client.submit(v1, None)
        with pytest.raises(aioflow.RunFailed):
            await stack.client.result(rid, timeout=10)
        # a new version is deployed and served meanwhile: the newest by name
        await register(stack.redis, [v2], fast=stack.workers[0].fast)
        newest = await stack.client.engine.pins.newest("rr")
        assert newest is not None and newest["version"] == versions.version_of(v2)
        assert await stack.client.retry(rid) == 1
        with pytest.raises(aioflow.RunFailed):  # fails once more, then it is replayed
            await stack.client.result(rid, timeout=10)
        r = keys.RunId.parse(rid)
        eid = await stack.redis.xadd(
            f"{r.tag}:dlq", {"id": "1-0", "r": r.key, "a": "finish", "k": "n"}
        )
        dead_letter = f"rr.{r.partition}.{eid.decode() if isinstance(eid, bytes) else eid}"
        assert await stack.client.replay(dead_letter) == rid
        assert await stack.client.result(rid, timeout=10) == ["v1", "finish"]
        assert (await stack.client.state(rid)).version == versions.version_of(v1)


async def test_gateway_lists_versions(redis_url: str, redis: Redis) -> None:
    await register(redis, [shop_v1.shop])
    app = create_app(
        redis, flows=[shop_v2.shop], settings=aioflow.Settings(redis_url=redis_url, version_wait=1)
    )
    async with TestClient(TestServer(app)) as http:
        doc: dict[str, Any] = {}

        async def v1_aged_v2_kept_fresh() -> bool:
            nonlocal doc
            resp = await http.get("/flow/shop")
            assert resp.status == 200
            doc = orjson.loads(await resp.read())
            return [v["served"] for v in doc["versions"]] == [True, False]

        # version_wait=1: v1 (registered once) ages out, the gateway keeps v2 seen
        await wait_until(v1_aged_v2_kept_fresh, timeout=5, what="v1 no longer served")
    assert doc["name"] == "shop" and doc["version"] == V2
    assert [v["version"] for v in doc["versions"]] == [V2, V1]
    assert doc["dag"]["entries"] == ["start"]


# -- real worker processes ------------------------------------------------------------


def _worker(procs: Procs, name: str, app: str, url: str, **env: str) -> subprocess.Popen[bytes]:
    """An ``aioflow worker`` process; ``env`` as settings (``AIOFLOW_<NAME>``)."""
    settings = {f"AIOFLOW_{k.upper()}": v for k, v in env.items()}
    return procs.aioflow(name, "worker", app, "--redis-url", url, env=clean_env(settings))


async def _served_by(redis: Redis, version: str, proc: subprocess.Popen[bytes]) -> bool:
    """A worker process serving ``version`` has registered and sent a heartbeat."""
    doc = await versions.listing(redis, "shop", window=60)
    for v in doc["versions"]:
        if v["version"] == version and any(f"-{proc.pid}-" in w for w in v["workers"]):
            return True
    return False


def _check(out: dict[str, Any], version: int, pid: int) -> None:
    names = ["start", "finish"] if version == 1 else ["start", "check", "finish"]
    assert out["version"] == version, out
    assert [step[1] for step in out["path"]] == names, out
    assert {step[0] for step in out["path"]} == {f"v{version}"}, out
    assert {step[2] for step in out["path"]} == {pid}, "a step ran on the other version's worker"


@pytest.mark.slow
async def test_two_versions_side_by_side(
    redis_url: str, redis: Redis, procs: Procs, capsys: pytest.CaptureFixture[str]
) -> None:
    opts = {"visibility_timeout": "1", "version_wait": "30"}
    w1 = _worker(procs, "w1", "tests.apps.shop_v1:app", redis_url, **opts)
    await wait_until(lambda: _served_by(redis, V1, w1), timeout=30, what="v1 worker")
    async with aioflow.Client(redis_url) as client:
        before = await client.submit("shop", {})
        assert (await client.state(before)).version == V1

    w2 = _worker(procs, "w2", "tests.apps.shop_v2:app", redis_url, **opts)
    await wait_until(lambda: _served_by(redis, V2, w2), timeout=30, what="v2 worker")
    async with aioflow.Client(redis_url) as client:
        # submitting by name after the deploy pins the new version
        after = await client.submit("shop", {})
        assert (await client.state(after)).version == V2
        _check(await client.result(before, timeout=20), 1, w1.pid)
        _check(await client.result(after, timeout=20), 2, w2.pid)

        # v1 messages reach the v2 worker while the v1 worker is frozen: parked, their
        # delivery undone (one may first land in w1's blocked read: reclaimed, then parked)
        w1.send_signal(signal.SIGSTOP)
        try:
            held = [await client.submit(shop_v1.shop, {}) for _ in range(5)]

            async def parked() -> bool:
                rows: Any = await redis.xpending_range(
                    STREAM, keys.GROUP, "-", "+", 100, consumername="v:" + V1
                )
                counts = sorted(r["times_delivered"] for r in rows)
                listed = await versions.listing(redis, "shop", window=60)
                waiting = {v["version"]: v["parked"] for v in listed["versions"]}
                return len(rows) == 5 and counts[3] == 0 and counts[4] <= 1 and waiting[V1] == 5

            await wait_until(parked, timeout=20, what="v1 messages parked, no delivery counted")
        finally:
            w1.send_signal(signal.SIGCONT)
        for rid in held:
            _check(await client.result(rid, timeout=20), 1, w1.pid)

        # and both at once, however the messages spread
        mixed = [
            (n % 2 + 1, await client.submit(shop_v1.shop if n % 2 == 0 else shop_v2.shop, {}))
            for n in range(20)
        ]
        for version, rid in mixed:
            _check(
                await client.result(rid, timeout=30), version, w1.pid if version == 1 else w2.pid
            )
        state = await client.state(mixed[0][1])
        assert set(state.vertices) == {"start", "finish"}
        assert all(v.attempts == 1 for v in state.vertices.values())

        # the last v1 worker dies mid-run; another v1 worker comes back within
        # version_wait and finishes the run on the v1 graph
        rid = await client.submit(shop_v1.shop, {"slow": 1})
        await wait_until(lambda: _running(client, rid), timeout=20, what="start running on v1")
        w1.kill()
        w1.wait()
        w3 = _worker(procs, "w3", "tests.apps.shop_v1:app", redis_url, **opts)
        _check(await client.result(rid, timeout=30), 1, w3.pid)
        st = await client.state(rid)
        assert st.status is aioflow.Status.COMPLETED and st.version == V1
        assert set(st.vertices) == {"start", "finish"}

    capsys.readouterr()
    assert await _flows("shop", redis_url) == 0  # what `aioflow flows shop` prints
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["name"] == "shop" and doc["version"] == V2
    by_version = {v["version"]: v for v in doc["versions"]}
    assert set(by_version) == {V1, V2}
    assert any(f"-{w3.pid}-" in w for w in by_version[V1]["workers"])
    assert any(f"-{w2.pid}-" in w for w in by_version[V2]["workers"])
    assert all(v["served"] and v["last_seen"] for v in by_version.values())


async def _running(client: aioflow.Client, rid: str) -> bool:
    st = await client.state(rid)
    return "start" in st.vertices and st.vertices["start"].status == "running"


@pytest.mark.slow
async def test_last_worker_of_a_version_killed(redis_url: str, redis: Redis, procs: Procs) -> None:
    opts = {"visibility_timeout": "1", "version_wait": "2", "version_retention": "3"}
    w1 = _worker(procs, "w1", "tests.apps.shop_v1:app", redis_url, **opts)
    w2 = _worker(procs, "w2", "tests.apps.shop_v2:app", redis_url, **opts)
    await wait_until(lambda: _served_by(redis, V1, w1), timeout=30, what="v1 worker")
    await wait_until(lambda: _served_by(redis, V2, w2), timeout=30, what="v2 worker")
    async with aioflow.Client(redis_url) as client:
        rid = await client.submit(shop_v1.shop, {"slow": 30})
        await wait_until(lambda: _running(client, rid), timeout=20, what="start running on v1")
        w1.kill()
        w1.wait()
        with pytest.raises(aioflow.RunFailed) as info:
            await client.result(rid, timeout=20)
        e = info.value
        assert e.error_type == "VersionUnavailable"
        assert e.vertex == "start"
        assert "'shop'" in e.message and V1 in e.message and V2 in e.message, e.message
        st = await client.state(rid)
        assert set(st.vertices) == {"start"}, "nothing of the v2 graph ran"
        assert st.vertices["start"].attempts == 1, "the v2 worker never started it"

        # nobody serves v1 any more: it leaves the registry after version_retention
        async def dropped() -> bool:
            doc = await versions.listing(redis, "shop", window=2)
            return [v["version"] for v in doc["versions"]] == [V2]

        await wait_until(dropped, timeout=20, what="v1 dropped from the registry")
    async with aioflow.Client(redis_url) as fresh:
        with pytest.raises(aioflow.UnknownVersion):
            await fresh.retry(rid)  # its definition is gone: no rerun on another graph
        with pytest.raises(aioflow.UnknownFlow):
            await _flows("nope", redis_url)
    assert w2.poll() is None, procs.output("w2")
