"""aioflow.testing used the way a user would: only the plugin's fixtures, on a small
flow of their own (no helper of aioflow's test suite)."""

from __future__ import annotations

import time
from typing import Any

import pytest

import aioflow
from aioflow.testing import FakeClock, Kit, eventually, run_flow

orders = aioflow.Flow("orders")
attempts: list[int] = []


@orders.node(
    retries=aioflow.RetryPolicy(
        retries=3, backoff=30.0, max_delay=300.0, jitter=0.0, retry_on=(ConnectionError,)
    )
)
async def charge(order: dict[str, Any], ctx: aioflow.Context) -> dict[str, Any]:
    attempts.append(ctx.attempt)
    if order.get("card") == "declined":
        raise ValueError("card declined")
    if order.get("flaky") and ctx.attempt < 3:
        raise ConnectionError("payment gateway timeout")
    return {"id": order["id"], "charged": order["amount"], "attempt": ctx.attempt}


@orders.node(after=charge)
async def receipt(charged: dict[str, Any]) -> str:
    return f"order {charged['id']}: {charged['charged']} EUR (attempt {charged['attempt']})"


digest = aioflow.Flow("digest")
digest.schedule("hourly", every=3600, data={"kind": "hourly"})


@digest.node
async def send(data: dict[str, str], ctx: aioflow.Context) -> str:
    return f"{data['kind']} digest for {ctx.options['tick'][0]}"


app = aioflow.App(flows=[orders, digest])


@pytest.fixture(autouse=True)
def _fresh() -> None:
    attempts.clear()


async def test_run_flow_returns_the_result(aioflow_kit: Kit) -> None:
    out = await run_flow(app, {"id": 7, "amount": 12}, flow="orders")
    assert out == "order 7: 12 EUR (attempt 1)"


async def test_run_flow_raises_run_failed(aioflow_kit: Kit) -> None:
    with pytest.raises(aioflow.RunFailed) as info:
        await run_flow(orders, {"id": 8, "amount": 1, "card": "declined"})
    assert (info.value.vertex, info.value.error_type) == ("charge", "ValueError")
    assert attempts == [1]  # retry_on=(ConnectionError,): a declined card is final


async def test_retries_take_no_real_time(aioflow_kit: Kit, aioflow_clock: FakeClock) -> None:
    start, real = aioflow_clock(), time.monotonic()
    out = await run_flow(orders, {"id": 9, "amount": 3, "flaky": True})
    assert out == "order 9: 3 EUR (attempt 3)"
    assert attempts == [1, 2, 3]
    assert aioflow_clock() - start == pytest.approx(30.0 + 60.0)  # the backoffs, jumped
    assert time.monotonic() - real < 5.0


async def test_a_retry_step_by_step(
    aioflow_worker: Any, aioflow_client: aioflow.Client, aioflow_clock: FakeClock
) -> None:
    await aioflow_worker(app)
    run_id = await aioflow_client.submit("orders", {"id": 10, "amount": 4, "flaky": True})

    async def charge_status() -> tuple[str, int]:
        v = (await aioflow_client.state(run_id)).vertices.get("charge")
        return (v.status, v.attempts) if v else ("pending", 0)

    async def is_(want: tuple[str, int]) -> bool:
        return await charge_status() == want

    await eventually(lambda: is_(("retrying", 1)), what="first retry scheduled")
    aioflow_clock.advance(29.0)  # not due yet
    assert await charge_status() == ("retrying", 1)
    aioflow_clock.advance(1.0)  # due: attempt 2 runs, fails, waits 60 s
    await eventually(lambda: is_(("retrying", 2)), what="second retry scheduled")
    aioflow_clock.advance(60.0)
    assert await aioflow_client.result(run_id, timeout=5) == "order 10: 4 EUR (attempt 3)"


async def test_delayed_start_and_schedule_follow_the_clock(
    aioflow_worker: Any, aioflow_client: aioflow.Client, aioflow_clock: FakeClock
) -> None:
    await aioflow_worker(app)
    later = await aioflow_client.submit("orders", {"id": 11, "amount": 5}, delay=600)
    aioflow_clock.advance(600)
    assert await aioflow_client.result(later, timeout=5) == "order 11: 5 EUR (attempt 1)"

    async def digests() -> list[aioflow.RunState]:
        runs, _ = await aioflow_client.runs("digest")
        return runs

    aioflow_clock.advance(3600)  # the clock starts on the hour: one tick
    await eventually(lambda: _nonempty(digests()), what="the hourly run")
    (run,) = await digests()
    assert await aioflow_client.result(run.run_id, timeout=5) == (
        "hourly digest for 2026-01-01T01:00:00Z"
    )


async def _nonempty(runs: Any) -> bool:
    return bool(await runs)
