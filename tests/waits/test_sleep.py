"""Sleep vertices: durable timers in the partition's delayed set, no slot held."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

import aioflow
from aioflow.testing import FakeClock, eventually
from tests.waits import flows


async def _vertex(client: aioflow.Client, run_id: str, addr: str) -> Any:
    return (await client.state(run_id)).vertices.get(addr)


async def test_fake_clock_advance_fires_a_sleep(
    aioflow_worker: Any, aioflow_client: aioflow.Client, aioflow_clock: FakeClock
) -> None:
    await aioflow_worker(flows.napper)
    start = aioflow_clock()
    run_id = await aioflow_client.submit("napper", 5)

    async def sleeping() -> bool:
        v = await _vertex(aioflow_client, run_id, "nap")
        return v is not None and v.status == "waiting"

    await eventually(sleeping, what="the sleep waiting")
    state = await aioflow_client.state(run_id)
    assert state.vertices["nap"].deadline == start + 3600
    assert b'"deadline":' in state.to_json()
    aioflow_clock.advance(3599)
    with pytest.raises(aioflow.ResultTimeout):  # not due: the mover passes, it stays
        await aioflow_client.result(run_id, timeout=0.5)
    assert (await _vertex(aioflow_client, run_id, "nap")).status == "waiting"
    aioflow_clock.advance(1)
    assert await aioflow_client.result(run_id, timeout=5) == {"woke": 5}
    nap = (await aioflow_client.state(run_id)).vertices["nap"]
    assert (nap.status, nap.attempts, nap.deadline) == ("completed", 1, None)


async def test_sleep_until_a_datetime_or_epoch(
    aioflow_worker: Any, aioflow_client: aioflow.Client, aioflow_clock: FakeClock
) -> None:
    await aioflow_worker(flows.alarm)
    at = aioflow_clock() + 120
    naive = datetime.fromtimestamp(at, UTC).replace(tzinfo=None)
    r1 = await aioflow_client.submit("alarm", {"at": at})
    r2 = await aioflow_client.submit("alarm", {"at": aioflow_clock() - 5})  # past: at once
    assert await aioflow_client.result(r2, timeout=5) == aioflow_clock() - 5
    r3 = await aioflow_client.submit("alarm", {"at": at + 60})

    async def waiting(rid: str) -> bool:
        v = await _vertex(aioflow_client, rid, "until")
        return v is not None and v.status == "waiting"

    await eventually(lambda: waiting(r1), what="r1 sleeping")
    await eventually(lambda: waiting(r3), what="r3 sleeping")
    assert naive.replace(tzinfo=UTC).timestamp() == at
    aioflow_clock.advance(120)
    assert await aioflow_client.result(r1, timeout=5) == at
    assert (await _vertex(aioflow_client, r3, "until")).status == "waiting"
    aioflow_clock.advance(60)
    assert await aioflow_client.result(r3, timeout=5) == at + 60
