"""A run is found by the id its caller chose (``run_id=`` / ``X-Run-Id``) as well as by
its full run id: the Redis client, the HTTP client and every run route of the gateway,
whatever the flow's partition count (and when it changed between versions)."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import aioflow
from aioflow.gateway.routes import create_app
from aioflow.store.keys import RunId, parse_run_ref
from tests.engine_helpers import Stack, running
from tests.helpers import wait_until

T = 10.0
PARTS = 4
HttpClient = TestClient[web.Request, web.Application]


def make_flows(gate: asyncio.Event, failures: dict[str, int]) -> list[aioflow.Flow]:
    """``held``: waits for ``gate``; ``flaky``: fails the first time per input key."""
    held = aioflow.Flow("held", partitions=PARTS)

    @held.node
    async def hold(x: Any) -> Any:
        await gate.wait()
        return {"got": x}

    flaky = aioflow.Flow("flaky", partitions=PARTS)

    @flaky.node
    async def once(x: str) -> str:
        failures[x] = failures.get(x, 0) + 1
        if failures[x] == 1:
            raise RuntimeError("first time fails")
        return x.upper()

    return [held, flaky]


def expected(flow: str, key: str, partitions: int = PARTS) -> str:
    return f"{flow}.{zlib.crc32(key.encode()) % partitions}.{key}"


# keys that land on different partitions of a 4-partition flow
KEYS = ["order-42", "order-43", "order-44", "order-45", "order-46"]


def test_the_keys_spread_over_partitions() -> None:
    assert len({expected("held", k) for k in KEYS}) == len(KEYS)
    assert len({expected("held", k).split(".")[1] for k in KEYS}) > 1


def test_parse_run_ref() -> None:
    assert parse_run_ref("held.3.order-42") == RunId("held", 3, "order-42")
    assert parse_run_ref("held.3.order-42", "held") == RunId("held", 3, "order-42")
    assert parse_run_ref("order-42", "held") == "order-42"
    with pytest.raises(aioflow.InvalidRunId, match="flow="):
        parse_run_ref("order-42")
    with pytest.raises(aioflow.InvalidRunId, match="does not belong"):
        parse_run_ref("held.3.order-42", "flaky")
    for bad in ("order 42", "", "x" * 65, "held.3.", "held.x.k", "a.b.c.d"):
        with pytest.raises(aioflow.InvalidRunId):
            parse_run_ref(bad, "held")
    with pytest.raises(aioflow.InvalidRunId):
        parse_run_ref("order-42", "Not A Flow")


async def test_client_methods_take_the_callers_id_with_the_flow(redis_url: str) -> None:
    gate, failures = asyncio.Event(), dict[str, int]()
    held, flaky = make_flows(gate, failures)
    async with running([held, flaky], redis_url) as s:
        c = s.client
        for key in KEYS:
            assert await c.submit("held", key, run_id=key) == expected("held", key)
        for key in KEYS:
            st = await c.state(key, flow="held")
            assert st.run_id == expected("held", key)
            assert st.status in (aioflow.Status.PENDING, aioflow.Status.RUNNING)
            # the full id keeps working, with or without the flow
            assert (await c.state(expected("held", key))).run_id == st.run_id
            assert (await c.state(expected("held", key), flow=held)).run_id == st.run_id

        a, b, d = KEYS[0], KEYS[1], KEYS[2]
        assert await c.pause(a, flow="held") is aioflow.Status.PAUSED
        assert (await c.state(a, flow=held)).status is aioflow.Status.PAUSED
        assert await c.resume(a, flow=held) in (aioflow.Status.RUNNING, aioflow.Status.PENDING)
        assert await c.stop(b, flow="held") is aioflow.Status.STOPPED
        with pytest.raises(aioflow.ResultTimeout):
            await c.result(d, timeout=0.05, flow="held")
        gate.set()
        assert await c.result(d, timeout=T, flow="held") == {"got": d}
        assert await c.result(a, timeout=T, flow=held) == {"got": a}
        with pytest.raises(aioflow.RunStopped):
            await c.result(b, timeout=T, flow="held")

        assert await c.submit("flaky", "abc", run_id="job-1") == expected("flaky", "job-1")
        with pytest.raises(aioflow.RunFailed):
            await c.result("job-1", timeout=T, flow="flaky")
        assert await c.retry("job-1", flow=flaky) >= 1
        assert await c.result("job-1", timeout=T, flow="flaky") == "ABC"


async def test_a_callers_id_without_the_flow_or_of_nothing(redis_url: str) -> None:
    gate, failures = asyncio.Event(), dict[str, int]()
    async with running(make_flows(gate, failures), redis_url) as s:
        c = s.client
        await c.submit("held", 1, run_id="order-42")
        calls = [
            c.state("order-42"),
            c.result("order-42", timeout=0.1),
            c.pause("order-42"),
            c.resume("order-42"),
            c.stop("order-42"),
            c.retry("order-42"),
        ]
        for call in calls:
            with pytest.raises(aioflow.InvalidRunId, match=r"pass the flow too \(flow=") as e:
                await call
            assert "'order-42'" in str(e.value)
        with pytest.raises(aioflow.InvalidRunId, match="does not belong"):
            await c.state(expected("held", "order-42"), flow="flaky")
        with pytest.raises(aioflow.RunNotFound):
            await c.state("never-submitted", flow="held")
        with pytest.raises(aioflow.UnknownFlow):
            await c.state("order-42", flow="nobody")
        gate.set()


@contextlib.asynccontextmanager
async def gateway(s: Stack, flows: list[aioflow.Flow]) -> AsyncIterator[HttpClient]:
    app = create_app(s.redis, flows=flows, settings=aioflow.Settings(redis_url=s.url))
    async with TestClient(TestServer(app)) as http:
        yield http


async def _doc(resp: Any, status: int = 200) -> Any:
    text = await resp.text()
    assert resp.status == status, (resp.status, text)
    assert resp.content_type == "application/json", text
    return await resp.json()


async def test_every_run_route_takes_the_callers_id(redis_url: str) -> None:
    gate, failures = asyncio.Event(), dict[str, int]()
    flows = make_flows(gate, failures)
    async with running(flows, redis_url) as s, gateway(s, flows) as http:
        for key in KEYS:
            resp = await http.post("/flow/held", json=key, headers={"X-Run-Id": key})
            assert (await _doc(resp, 202))["run_id"] == expected("held", key)
        for key in KEYS:
            doc = await _doc(await http.get(f"/flow/held/run/{key}"))
            assert doc["run_id"] == expected("held", key)
            assert doc["flow"] == "held"
            full = await _doc(await http.get(f"/flow/held/run/{expected('held', key)}"))
            assert full["run_id"] == doc["run_id"]

        a, b = KEYS[0], KEYS[1]
        doc = await _doc(await http.post(f"/flow/held/run/{a}/pause"))
        assert doc == {"run_id": expected("held", a), "status": "paused"}
        doc = await _doc(await http.post(f"/flow/held/run/{a}/resume"))
        assert doc["run_id"] == expected("held", a) and doc["status"] in ("running", "pending")
        doc = await _doc(await http.post(f"/flow/held/run/{b}/stop"))
        assert doc == {"run_id": expected("held", b), "status": "stopped"}
        gate.set()
        assert await s.client.result(a, timeout=T, flow="held") == {"got": a}

        resp = await http.post("/flow/flaky", json="xyz", headers={"X-Run-Id": "job-7"})
        await _doc(resp, 202)
        with pytest.raises(aioflow.RunFailed):
            await s.client.result("job-7", timeout=T, flow="flaky")
        doc = await _doc(await http.post("/flow/flaky/run/job-7/retry"))
        assert doc["run_id"] == expected("flaky", "job-7") and doc["requeued"] >= 1
        await wait_until(
            lambda: _status(http, "/flow/flaky/run/job-7", "completed"), what="retried run ends"
        )

        doc = await _doc(await http.get("/flow/held/run/never-submitted"), 404)
        assert doc["error"] == "run_not_found"
        doc = await _doc(await http.get("/flow/nobody/run/order-42"), 404)
        assert doc["error"] == "unknown_flow"
        doc = await _doc(await http.get(f"/flow/flaky/run/{expected('held', a)}"), 400)
        assert doc["error"] == "invalid_id"
        doc = await _doc(await http.post("/flow/held/run/bad%20key/stop"), 400)
        assert doc["error"] == "invalid_id"


async def _status(http: HttpClient, path: str, want: str) -> bool:
    doc = await _doc(await http.get(path))
    return bool(doc["status"] == want)


async def test_the_http_client_takes_the_callers_id(redis_url: str) -> None:
    gate, failures = asyncio.Event(), dict[str, int]()
    flows = make_flows(gate, failures)
    async with running(flows, redis_url) as s, gateway(s, flows) as http:
        base = str(http.server.make_url("")).rstrip("/")
        async with aioflow.Client(base) as c:
            assert await c.submit("held", 5, run_id="order-42") == expected("held", "order-42")
            st = await c.state("order-42", flow="held")
            assert st.run_id == expected("held", "order-42")
            assert await c.pause("order-42", flow=flows[0]) is aioflow.Status.PAUSED
            assert await c.resume("order-42", flow="held") is not aioflow.Status.PAUSED
            with pytest.raises(aioflow.InvalidRunId, match="flow="):
                await c.state("order-42")
            await c.submit("held", 6, run_id="order-43")
            assert await c.stop("order-43", flow="held") is aioflow.Status.STOPPED
            gate.set()
            assert await c.result("order-42", timeout=T, flow="held") == {"got": 5}
            await c.submit("flaky", "q", run_id="job-9")
            with pytest.raises(aioflow.RunFailed):
                await c.result("job-9", timeout=T, flow="flaky")
            assert await c.retry("job-9", flow="flaky") >= 1
            assert await c.result("job-9", timeout=T, flow="flaky") == "Q"
            with pytest.raises(aioflow.RunNotFound):
                await c.state("never-submitted", flow="held")


def _moving_key() -> str:
    """A key whose partition differs between 2 and 3 partitions."""
    for i in range(100):
        key = f"move-{i}"
        crc = zlib.crc32(key.encode())
        if crc % 2 != crc % 3:
            return key
    raise AssertionError("no such key")


async def test_a_callers_id_is_found_after_the_partition_count_changed(redis_url: str) -> None:
    """A run submitted while the flow had 2 partitions is found once a version with 3
    is the one served: the run stays where it was created."""

    def version(partitions: int) -> aioflow.Flow:
        flow = aioflow.Flow("moves", partitions=partitions)

        @flow.node
        async def step(x: Any) -> Any:
            return x

        return flow

    key = _moving_key()
    v2 = version(2)
    async with aioflow.Client(redis_url) as c:
        rid = await c.submit(v2, 1, run_id=key)  # registers v2; no worker: stays pending
        assert rid == expected("moves", key, 2)
    async with running([version(3)], redis_url) as s:  # v3 served: the newest version
        assert (await s.client.engine.pin("moves")).partitions == 3
        st = await s.client.state(key, flow="moves")
        assert st.run_id == rid
        assert (await s.client.state(key, flow=v2)).run_id == rid
        # an id nobody submitted resolves where a new run of it would go
        other = "fresh-id"
        assert str(await s.client.engine.run_id(other, "moves")) == expected("moves", other, 3)
        assert await s.client.submit("moves", 2, run_id=other) == expected("moves", other, 3)
        assert await s.client.result(other, timeout=T, flow="moves") == 2


async def test_callers_ids_on_a_cluster_with_auto_partitions(cluster_url: str) -> None:
    """On a cluster ``partitions="auto"`` gives the flow several partitions, on several
    masters: a caller's id is found on whichever one holds it, through the client and
    the gateway, and also when the flow's partition count changed."""
    flow = aioflow.Flow("spread")

    @flow.node
    async def step(x: Any) -> Any:
        return x

    async with running([flow], cluster_url) as s, gateway(s, [flow]) as http:
        parts = (await s.client.engine.pin("spread")).partitions
        assert parts > 1
        keys = [f"c-{i}" for i in range(8)]
        for key in keys:
            assert await s.client.submit("spread", key, run_id=key) == expected(
                "spread", key, parts
            )
        assert len({expected("spread", k, parts).split(".")[1] for k in keys}) > 1
        for key in keys:
            assert await s.client.result(key, timeout=T, flow="spread") == key
            doc = await _doc(await http.get(f"/flow/spread/run/{key}"))
            assert doc["run_id"] == expected("spread", key, parts) and doc["result"] == key

    key = _moving_key()
    v2 = aioflow.Flow("moving", partitions=2)

    @v2.node
    async def same(x: Any) -> Any:
        return x

    async with aioflow.Client(cluster_url) as c:
        rid = await c.submit(v2, 1, run_id=key)
        v3 = aioflow.Flow("moving", partitions=3)
        v3.node("same", same)
        async with running([v3], cluster_url) as s:
            # the pipeline of EXISTS spans partitions, hence slots and masters
            assert (await s.client.state(key, flow="moving")).run_id == rid
