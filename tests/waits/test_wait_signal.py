"""Wait vertices resolved by signals or by their timeout, exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aioflow
from aioflow.testing import FakeClock, eventually
from tests.engine_helpers import running
from tests.helpers import wait_until
from tests.waits import flows
from tests.waits.signals import signal


async def _status(client: aioflow.Client, run_id: str, addr: str) -> str | None:
    v = (await client.state(run_id)).vertices.get(addr)
    return v.status.value if v is not None else None


async def _is(client: aioflow.Client, run_id: str, addr: str, status: str) -> bool:
    return await _status(client, run_id, addr) == status


async def _waiting(client: aioflow.Client, run_id: str, addr: str) -> bool:
    return await _status(client, run_id, addr) == "waiting"


async def test_a_signal_resolves_the_wait_and_the_dag_goes_on(any_redis_url: str) -> None:
    async with running([flows.review], any_redis_url, concurrency=2) as s:
        rid = await s.client.submit("review", {"user": "u1"})
        await wait_until(lambda: _waiting(s.client, rid, "manual"), what="waiting")
        state = await s.client.state(rid)
        assert state.vertices["manual"].deadline is not None
        assert await signal(s.client, rid, "manual", {"approved": True}) is True
        assert await s.client.result(rid, timeout=10) == {"approved": True}
        # resolved once: a second signal is not taken, the output stays
        assert await signal(s.client, rid, "manual", {"approved": False}) is False
        state = await s.client.state(rid)
        assert state.vertices["manual"].status == "completed"
        assert state.vertices["manual"].attempts == 1


async def test_a_signal_before_the_run_reaches_the_wait_is_kept(redis_url: str) -> None:
    gate = asyncio.Event()
    slow = aioflow.Flow("slow-review")

    @slow.node
    async def first(data: Any) -> Any:
        await gate.wait()
        return data

    slow.wait("answer", after=first)
    async with running([slow], redis_url) as s:
        rid = await s.client.submit("slow-review", 1)
        await wait_until(lambda: _is(s.client, rid, "first", "running"), what="first running")
        assert await signal(s.client, rid, "answer", "early") is True
        assert await _status(s.client, rid, "answer") is None  # not started
        gate.set()
        assert await s.client.result(rid, timeout=10) == "early"


async def test_signal_refuses_what_is_not_a_wait(redis_url: str) -> None:
    async with running([flows.review], redis_url) as s:
        rid = await s.client.submit("review", {"user": "u1"})
        with pytest.raises(aioflow.InvalidTransition):
            await signal(s.client, rid, "decide", 1)
        with pytest.raises(aioflow.InvalidTransition):
            await signal(s.client, rid, "nope", 1)
        with pytest.raises(aioflow.RunNotFound):
            await signal(s.client, "review.0.nosuchrun", "manual", 1)
        with pytest.raises(aioflow.LimitExceeded):
            e = s.client.engine
            e.max_value, old = 10, e.max_value
            try:
                await signal(s.client, rid, "manual", "x" * 100)
            finally:
                e.max_value = old


async def test_timeout_fails_with_wait_timeout(
    aioflow_worker: Any, aioflow_client: aioflow.Client, aioflow_clock: FakeClock
) -> None:
    await aioflow_worker(flows.review)
    rid = await aioflow_client.submit("review", {"user": "u2"})
    await eventually(lambda: _waiting(aioflow_client, rid, "manual"), what="waiting")
    aioflow_clock.advance(60)
    with pytest.raises(aioflow.RunFailed) as info:
        await aioflow_client.result(rid, timeout=5)
    assert (info.value.vertex, info.value.error_type) == ("manual", "WaitTimeout")
    assert await signal(aioflow_client, rid, "manual", 1) is False  # too late


async def test_timeout_with_default_gives_the_default(
    aioflow_worker: Any, aioflow_client: aioflow.Client, aioflow_clock: FakeClock
) -> None:
    await aioflow_worker(flows.lenient)
    rid = await aioflow_client.submit("lenient", None)
    await eventually(lambda: _waiting(aioflow_client, rid, "maybe"), what="waiting")
    aioflow_clock.advance(30)
    assert await aioflow_client.result(rid, timeout=5) == {"approved": "by default"}


async def test_a_timed_out_wait_retries_and_a_signal_resolves_the_retry(
    aioflow_worker: Any, aioflow_client: aioflow.Client, aioflow_clock: FakeClock
) -> None:
    await aioflow_worker(flows.patient)
    rid = await aioflow_client.submit("patient", None)
    await eventually(lambda: _waiting(aioflow_client, rid, "twice"), what="attempt 1 waiting")
    aioflow_clock.advance(10)  # attempt 1 times out: a retry after 1 s

    async def retrying() -> bool:
        return await _status(aioflow_client, rid, "twice") == "retrying"

    await eventually(retrying, what="the retry scheduled")
    # a signal while it retries is kept for attempt 2, which takes it at once
    assert await signal(aioflow_client, rid, "twice", "second time") is True
    aioflow_clock.advance(1)
    assert await aioflow_client.result(rid, timeout=5) == "second time"
    assert (await aioflow_client.state(rid)).vertices["twice"].attempts == 2


async def test_signal_and_timeout_race_resolves_once(
    aioflow_worker: Any, aioflow_client: aioflow.Client, aioflow_clock: FakeClock
) -> None:
    """The timer fires and a signal comes at the same moment, for many runs: each
    run ends once, either completed with the signal or failed by the timeout, and
    its vertex ran one resolution."""
    await aioflow_worker(flows.review, concurrency=8)
    n = 40
    rids = [await aioflow_client.submit("review", {"user": f"u{i}"}) for i in range(n)]

    async def all_waiting() -> bool:
        return all([await _waiting(aioflow_client, r, "manual") for r in rids])

    await eventually(all_waiting, what="every run waiting")
    aioflow_clock.advance(60)
    taken = await asyncio.gather(
        *(signal(aioflow_client, r, "manual", {"approved": True}) for r in rids)
    )
    outcomes = {"completed": 0, "failed": 0}
    for rid, was_taken in zip(rids, taken, strict=True):
        try:
            assert await aioflow_client.result(rid, timeout=10) == {"approved": True}
            outcomes["completed"] += 1
            assert was_taken
        except aioflow.RunFailed as e:
            assert e.error_type == "WaitTimeout"
            outcomes["failed"] += 1
        state = await aioflow_client.state(rid)
        assert state.vertices["manual"].attempts == 1
    assert sum(outcomes.values()) == n
