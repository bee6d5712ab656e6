"""Wait vertices resolved by events: once, whatever races them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import aioflow
from aioflow.testing import FakeClock, eventually
from tests.engine_helpers import running
from tests.helpers import wait_until

kyc = aioflow.Flow("kyc-events")


async def _user(data: Any) -> str:  # an async key function
    return str(data["user"])


kyc.wait("review", event="kyc.reviewed", key=_user, timeout=100)
decided: list[str] = []


@kyc.node(after="review")
async def decide(data: Any, ctx: aioflow.Context) -> Any:
    decided.append(ctx.run_id)
    return data


async def _status(client: aioflow.Client, run_id: str, addr: str) -> str | None:
    v = (await client.state(run_id)).vertices.get(addr)
    return v.status.value if v is not None else None


async def test_event_and_timeout_race_resolves_each_wait_once(
    aioflow_worker: Any, aioflow_client: aioflow.Client, aioflow_clock: FakeClock
) -> None:
    decided.clear()
    await aioflow_worker(kyc, concurrency=8)
    n = 40
    rids = [await aioflow_client.submit(kyc, {"user": f"u{i}"}) for i in range(n)]

    async def all_waiting() -> bool:
        return all([await _status(aioflow_client, r, "review") == "waiting" for r in rids])

    await eventually(all_waiting, what="every run waiting")
    aioflow_clock.advance(100)  # every timer is due: the mover and the events race
    sent = await asyncio.gather(
        *(aioflow_client.send_event("kyc.reviewed", {"ok": i}, key=f"u{i}") for i in range(n))
    )
    completed = failed = 0
    for i, rid in enumerate(rids):
        try:
            assert await aioflow_client.result(rid, timeout=10) == {"ok": i}
            completed += 1
        except aioflow.RunFailed as e:
            assert e.error_type == "WaitTimeout"
            failed += 1
        review = (await aioflow_client.state(rid)).vertices["review"]
        assert review.attempts == 1
    assert completed + failed == n
    assert sorted(decided) == sorted(set(decided)) and len(decided) == completed
    assert all(s["resolved"] in (0, 1) for s in sent)


async def test_since_vertex_ignores_events_sent_before_the_wait(any_redis_url: str) -> None:
    release = asyncio.Event()
    strict = aioflow.Flow("strict-events")

    @strict.node
    async def first(data: Any) -> Any:
        await release.wait()
        return data

    strict.wait(
        "now-only", event="order.paid", key=lambda d: d["order"], since="vertex", after=first
    )
    lax = aioflow.Flow("lax-events")

    @lax.node
    async def first_lax(data: Any) -> Any:
        await release.wait()
        return data

    lax.wait("any-since-run", event="order.paid", key=lambda d: d["order"], after=first_lax)

    async with running([strict, lax], any_redis_url, concurrency=4) as s:
        r_strict = await s.client.submit("strict-events", {"order": "o1"})
        r_lax = await s.client.submit("lax-events", {"order": "o1"})

        async def both_started() -> bool:
            return bool(
                await _status(s.client, r_strict, "first")
                and await _status(s.client, r_lax, "first_lax")
            )

        await wait_until(both_started, what="both first vertices running")
        await s.client.send_event("order.paid", "early", key="o1")
        release.set()
        assert await s.client.result(r_lax, timeout=10) == "early"  # kept for it

        async def strict_waiting() -> bool:
            return await _status(s.client, r_strict, "now-only") == "waiting"

        await wait_until(strict_waiting, what="the strict wait waiting")
        with pytest.raises(aioflow.ResultTimeout):
            await s.client.result(r_strict, timeout=0.3)
        await s.client.send_event("order.paid", "late", key="o1")
        assert await s.client.result(r_strict, timeout=10) == "late"
