"""Per-vertex timings in the run state obey the edges of the graph."""

from __future__ import annotations

import asyncio
from typing import Any

import aioflow
from aioflow.core import codec
from tests.engine_helpers import running

T = 10.0
MS = 0.002  # queued is the stream entry id's time: milliseconds, rounded down
FIELDS = {"status", "attempts", "started", "ended", "queued", "queue_wait"}


async def _pause(x: Any) -> Any:
    await asyncio.sleep(0.01)
    return x


def _check_edge(vs: dict[str, Any], parent: str, child: str) -> None:
    p, c = vs[parent], vs[child]
    assert p["ended"] <= c["started"], (parent, p, child, c)
    assert c["queued"] >= p["ended"] - MS, (parent, p, child, c)


def _check_vertex(name: str, v: dict[str, Any]) -> None:
    assert set(v) == FIELDS, name
    assert v["status"] == "completed", (name, v)
    assert v["queued"] <= v["started"] + MS <= v["ended"] + MS, (name, v)
    assert abs(v["queue_wait"] - max(0.0, v["started"] - v["queued"])) < 1e-9, (name, v)


async def test_chain_and_fan_out_join(any_redis_url: str) -> None:
    chain = aioflow.Flow("t-chain")
    chain.node("a", _pause)
    chain.node("b", _pause, after="a")
    chain.node("c", _pause, after="b")

    fan = aioflow.Flow("t-fan")
    fan.node("top", _pause)
    for name in ("x", "y", "z"):
        fan.node(name, _pause, after="top")
    fan.node("join", _pause, after=["x", "y", "z"])
    each = fan.foreach("each", lambda d: {str(i): i for i in range(3)}, after="join")
    each.node("item", _pause)
    fan.node("last", _pause, after="each")

    async with running([chain, fan], any_redis_url) as s:
        rid = await s.client.submit("t-chain", 1)
        await s.client.result(rid, timeout=T)
        doc = codec.loads((await s.client.state(rid)).to_json())
        vs = doc["vertices"]
        assert set(vs) == {"a", "b", "c"}
        for name, v in vs.items():
            _check_vertex(name, v)
        _check_edge(vs, "a", "b")
        _check_edge(vs, "b", "c")
        assert doc["started"] <= vs["a"]["started"] and vs["c"]["ended"] <= doc["ended"]

        rid = await s.client.submit("t-fan", 1)
        await s.client.result(rid, timeout=T)
        vs = codec.loads((await s.client.state(rid)).to_json())["vertices"]
        items = [a for a in vs if a.startswith("each[")]
        assert len(items) == 3
        for name, v in vs.items():
            _check_vertex(name, v)
        for name in ("x", "y", "z"):
            _check_edge(vs, "top", name)
            _check_edge(vs, name, "join")
        _check_edge(vs, "join", "each")
        _check_edge(vs, "each", "last")
        for item in items:  # a group spans its scopes: from its open to its close
            assert vs["each"]["started"] <= vs[item]["started"]
            assert vs[item]["ended"] <= vs["each"]["ended"]


async def test_retried_vertex_shows_its_last_attempt(redis_url: str) -> None:
    flow = aioflow.Flow("t-retry")
    seen: list[float] = []

    @flow.node(retries=aioflow.RetryPolicy(retries=1, backoff=0.05, jitter=0))
    async def flaky(x: int) -> int:
        seen.append(x)
        if len(seen) == 1:
            raise RuntimeError("once")
        return x

    async with running([flow], redis_url) as s:
        rid = await s.client.submit("t-retry", 1)
        await s.client.result(rid, timeout=T)
        st = await s.client.state(rid)
    v = st.vertices["flaky"]
    assert v.attempts == 2
    assert st.created is not None
    assert v.started is not None and v.ended is not None and v.queued is not None
    # the retry was enqueued by the delayed-set mover, after the backoff
    assert v.queued >= st.created + 0.05 - MS
    assert v.started <= v.ended
