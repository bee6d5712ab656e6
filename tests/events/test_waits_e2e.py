"""Flows that wait on events, end to end with real workers (on one Redis and a
Cluster), and through the testing kit's fake clock."""

from __future__ import annotations

import asyncio
from typing import Any

import aioflow
from aioflow.testing import Kit
from tests.engine_helpers import running
from tests.helpers import wait_until

T = 10.0


def kyc_flow(gate: asyncio.Event | None = None) -> aioflow.Flow:
    kyc = aioflow.Flow("kyc")

    @kyc.node
    async def score(data: Any) -> Any:
        if gate is not None:
            await gate.wait()
        return data

    review = kyc.wait("review", event="kyc.reviewed", key=lambda d: d["user"], after=score)

    @kyc.node(after=review)
    async def decide(verdict: Any) -> Any:
        return {"approved": verdict["approved"]}

    return kyc


async def test_an_event_sent_before_the_run_reaches_its_wait_counts(any_redis_url: str) -> None:
    gate = asyncio.Event()
    async with running([kyc_flow(gate)], any_redis_url) as s:
        rid = await s.client.submit("kyc", {"user": "u1"})
        await wait_until(lambda: _running(s.client, rid, "score"), what="score running")
        ans = await s.client.send_event("kyc.reviewed", {"approved": True}, key="u1")
        assert ans == {"resolved": 0, "started": []}  # nobody waits yet ...
        gate.set()
        # ... and the run, reaching its wait, finds the event kept for it
        assert await s.client.result(rid, timeout=T) == {"approved": True}


async def test_one_event_resolves_the_runs_of_its_key_and_no_other(any_redis_url: str) -> None:
    async with running([kyc_flow()], any_redis_url) as s:
        mine = [await s.client.submit("kyc", {"user": "u1"}) for _ in range(3)]
        other = await s.client.submit("kyc", {"user": "u2"})
        await wait_until(lambda: _all_waiting(s.client, [*mine, other]), what="runs waiting")
        ans = await s.client.send_event(
            "kyc.reviewed", {"approved": False}, key="u1", event_id="x1"
        )
        assert ans["resolved"] == 3
        for rid in mine:
            assert await s.client.result(rid, timeout=T) == {"approved": False}
        assert (await s.client.state(other)).status is aioflow.Status.RUNNING
        # the same event id again resolves nothing more, not even the other key's run
        again = await s.client.send_event(
            "kyc.reviewed", {"approved": True}, key="u2", event_id="x1"
        )
        assert again == ans
        assert (await s.client.state(other)).vertices["review"].status == "waiting"
        await s.client.send_event("kyc.reviewed", {"approved": True}, key="u2")
        assert await s.client.result(other, timeout=T) == {"approved": True}


async def test_the_kit_sends_events_under_a_fake_clock(redis_url: str) -> None:
    kyc = kyc_flow()
    signup = aioflow.Flow("signup", on_event="user.created")

    @signup.node
    async def hello(data: Any, ctx: aioflow.Context) -> Any:
        return [data, ctx.options["event_key"]]

    async with Kit(redis_url) as kit:
        await kit.worker([kyc, signup])
        rid = await kit.client.submit("kyc", {"user": "u9"})
        await wait_until(lambda: _waiting(kit.client, rid), what="the run waiting")
        ans = await kit.send_event("kyc.reviewed", {"approved": True}, key="u9")
        assert ans["resolved"] == 1
        assert await kit.client.result(rid, timeout=T) == {"approved": True}
        [started] = (await kit.send_event("user.created", {"id": 1}, key="k1"))["started"]
        assert await kit.client.result(started, timeout=T) == [{"id": 1}, ["k1"]]


async def _running(client: aioflow.Client, rid: str, vertex: str) -> bool:
    v = (await client.state(rid)).vertices.get(vertex)
    return v is not None and v.status == "running"


async def _waiting(client: aioflow.Client, rid: str) -> bool:
    v = (await client.state(rid)).vertices.get("review")
    return v is not None and v.status == "waiting"


async def _all_waiting(client: aioflow.Client, rids: list[str]) -> bool:
    return all([await _waiting(client, r) for r in rids])
