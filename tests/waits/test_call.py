"""Call vertices: a child run per call, its result the output, its failure ChildFailed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aioflow
from aioflow.store.keys import RunId
from aioflow.worker.calls import child_key
from tests.engine_helpers import running
from tests.helpers import wait_until
from tests.waits import flows


async def _vertex(client: aioflow.Client, run_id: str, addr: str) -> Any:
    return (await client.state(run_id)).vertices.get(addr)


async def test_a_call_returns_the_child_result_and_links_both_ways(any_redis_url: str) -> None:
    async with running([flows.parent, flows.child], any_redis_url, concurrency=4) as s:
        rid = await s.client.submit("parent", 21)
        assert await s.client.result(rid, timeout=15) == {"child": 42}
        kid = await _vertex(s.client, rid, "kid")
        assert kid.status == "completed" and kid.child is not None
        child_state = await s.client.state(kid.child)
        assert child_state.flow == "child"
        assert child_state.parent == rid
        assert child_state.status == "completed" and child_state.result == 42
        assert b'"child":"child.' in (await s.client.state(rid)).to_json()
        assert child_state.version is not None  # pinned like any submit of a Flow


async def test_a_failed_child_fails_the_vertex_with_child_failed(redis_url: str) -> None:
    async with running([flows.parent, flows.child], redis_url) as s:
        rid = await s.client.submit("parent", "boom")
        with pytest.raises(aioflow.RunFailed) as info:
            await s.client.result(rid, timeout=15)
        err = info.value
        assert (err.vertex, err.error_type) == ("kid", "ChildFailed")
        kid = await _vertex(s.client, rid, "kid")
        assert kid.child is not None and kid.child in err.message
        assert "child says no" in err.message
        assert (await s.client.state(kid.child)).status == "failed"


async def test_the_child_id_derives_from_parent_vertex_and_message() -> None:
    a = child_key("parent.0.abc", "kid", b"1-0")
    assert a == child_key("parent.0.abc", "kid", b"1-0")  # a redelivery: the same child
    assert a != child_key("parent.0.abc", "kid", b"2-0")  # a retry: a new one
    assert a != child_key("parent.0.abd", "kid", b"1-0")
    RunId("child", 0, a)  # a valid run key
    assert len(a) <= 64


async def test_stopping_the_parent_stops_its_child(any_redis_url: str) -> None:
    async with running(
        [flows.stuck_parent, flows.waiting_child], any_redis_url, concurrency=2
    ) as s:
        rid = await s.client.submit("stuck-parent", 1)

        async def child_waiting() -> bool:
            kid = await _vertex(s.client, rid, "kid")
            if kid is None or kid.child is None or kid.status != "waiting":
                return False
            v = (await s.client.state(kid.child)).vertices.get("forever")
            return v is not None and v.status == "waiting"

        await wait_until(child_waiting, timeout=15, what="parent and child waiting")
        child = (await _vertex(s.client, rid, "kid")).child
        await s.client.stop(rid)
        assert (await s.client.state(rid)).vertices["kid"].status == "cancelled"

        async def child_stopped() -> bool:
            return (await s.client.state(child)).status == "stopped"

        await wait_until(child_stopped, timeout=10, what="the child stopped")


async def test_a_failing_parent_stops_its_child(redis_url: str) -> None:
    release = asyncio.Event()
    fails = aioflow.Flow("fails-while-calling")
    fails.call("kid", flows.waiting_child)

    @fails.node
    async def breaks(data: Any) -> Any:
        await release.wait()
        raise RuntimeError("parent breaks")

    async with running([fails, flows.waiting_child], redis_url, concurrency=2) as s:
        rid = await s.client.submit("fails-while-calling", 1)

        async def child_waiting() -> bool:
            kid = await _vertex(s.client, rid, "kid")
            if kid is None or kid.child is None:
                return False
            v = (await s.client.state(kid.child)).vertices.get("forever")
            return v is not None and v.status == "waiting"

        await wait_until(child_waiting, timeout=15, what="the child waiting")
        child = (await _vertex(s.client, rid, "kid")).child
        release.set()
        with pytest.raises(aioflow.RunFailed) as info:
            await s.client.result(rid, timeout=10)
        assert info.value.vertex == "breaks"

        async def child_stopped() -> bool:
            return (await s.client.state(child)).status == "stopped"

        await wait_until(child_stopped, timeout=10, what="the child stopped")
