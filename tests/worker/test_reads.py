"""How a worker reads: message ids are unique per stream only, blocked reads hold
no concurrency slot while the bound on running nodes still holds, and a failure
in the read path does not stop the reading."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import aioflow
from aioflow.app import connect
from aioflow.store import keys
from aioflow.store.keys import RunId
from tests.engine_helpers import running
from tests.helpers import wait_until

T = 20.0


async def test_equal_message_ids_on_two_streams_are_two_messages(redis_url: str) -> None:
    """Two partitions' streams can hold entries with the same id (ids are made per
    stream, from the clock): the worker must track, lease and finish both. Held
    past the visibility timeout, a message whose lease was not renewed would be
    reclaimed and run a second time."""
    flow = aioflow.Flow("twins", partitions=2)
    runs: list[int] = []

    @flow.node
    async def hold(x: int) -> int:
        runs.append(x)
        await asyncio.sleep(1.2)  # 4 visibility timeouts
        return x

    redis = connect(redis_url)
    try:
        async with aioflow.Client(redis_url) as client:
            # caller ids "a" and "d" hash to partitions 1 and 0
            ids = [
                await client.submit(flow, 0, run_id="a"),
                await client.submit(flow, 1, run_id="d"),
            ]
            streams = [keys.stream("twins", p) for p in range(2)]
            parts = {RunId.parse(i).partition for i in ids}
            assert parts == {0, 1}, "the caller ids must land on both partitions"
            # the same id on both streams, past the newest entry of either
            same = f"{int(time.time() * 1000) + 60_000}-0"
            for s in streams:
                entries: Any = await redis.xrange(s)
                [(old, fields)] = entries
                await redis.xdel(s, old)
                await redis.xadd(s, fields, id=same)
            async with running([flow], redis_url, visibility_timeout=0.3) as stack:
                w = stack.workers[0]
                await wait_until(lambda: len(w._inflight) == 2, timeout=T, what="both running")
                got = [await client.result(i, timeout=T) for i in ids]
    finally:
        await redis.aclose()
    assert sorted(got) == [0, 1]
    assert sorted(runs) == [0, 1]  # each ran once: both leases were renewed


async def test_concurrency_bound_holds_with_more_blocked_reads_than_slots(
    any_redis_url: str,
) -> None:
    """With concurrency 2 and many partitions (on a cluster, a blocking read per
    slot), no more than 2 nodes run at once, and every run completes: what a read
    brings beyond the free slots waits its turn."""
    flow = aioflow.Flow("narrow", partitions=12)
    running_now = 0
    peak = 0

    @flow.node
    async def step(x: int) -> int:
        nonlocal running_now, peak
        running_now += 1
        peak = max(peak, running_now)
        await asyncio.sleep(0.01)
        running_now -= 1
        return x + 1

    async with running([flow], any_redis_url, concurrency=2) as s:
        ids = await s.client.submit_many(flow, list(range(60)))
        got: list[Any] = [await s.client.result(i, timeout=T) for i in ids]
    assert got == [x + 1 for x in range(60)]
    assert 1 <= peak <= 2


async def test_a_failure_in_the_read_path_does_not_stop_reading(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug that escapes one read (here: the first claim raises) is logged and the
    worker reads on; the message it dropped is reclaimed after the visibility timeout."""
    flow = aioflow.Flow("sturdy")

    @flow.node
    async def inc(x: int) -> int:
        return x + 1

    real = aioflow.Worker._start
    failed = False

    async def start_once_broken(self: aioflow.Worker, *args: Any, **kw: Any) -> Any:
        nonlocal failed
        if not failed:
            failed = True
            raise RuntimeError("injected read-path bug")
        return await real(self, *args, **kw)

    monkeypatch.setattr(aioflow.Worker, "_start", start_once_broken)
    async with running([flow], redis_url, visibility_timeout=0.3) as s:
        first = await s.client.submit(flow, 1)
        await wait_until(lambda: failed, timeout=T, what="the injected failure")
        assert await s.client.execute(flow, 10, timeout=T) == 11  # still reading
        assert await s.client.result(first, timeout=T) == 2  # reclaimed
    assert "reading failed; starting the readers again" in caplog.text
