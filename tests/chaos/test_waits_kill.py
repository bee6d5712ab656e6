"""A worker dies (SIGKILL) while a thousand runs wait on events: the waits live in
Redis, so the events sent while no worker runs resume every run, each once."""

from __future__ import annotations

import asyncio
import signal

import pytest
from redis.asyncio import Redis

import aioflow
from tests.chaos.harness import Workers, exec_counts
from tests.helpers import wait_until

pytestmark = pytest.mark.chaos

N = 1000


async def _waiting(client: aioflow.Client, ids: list[str]) -> bool:
    states = await asyncio.gather(*(client.state(rid) for rid in ids))
    return all("w" in st.vertices and st.vertices["w"].status == "waiting" for st in states)


async def test_sigkill_worker_with_1000_waiting_runs(
    redis_url: str, redis: Redis, workers: Workers
) -> None:
    w1 = workers.start(redis_url, concurrency=10)
    await w1.ready()
    async with aioflow.Client(redis_url) as client:
        ids = await client.submit_many("waiter", range(N))
        await wait_until(lambda: _waiting(client, ids), timeout=60, what="1000 runs waiting")
        # ten slots and a thousand waits: waiting holds no slot
        w1.signal(signal.SIGKILL)
        assert w1.proc.wait() == -signal.SIGKILL

        # no worker runs now: each event is kept and its run's resolution queued
        answers = await asyncio.gather(
            *(client.send_event("chaos.go", {"v": i}, key=str(i)) for i in range(N))
        )
        assert [a["resolved"] for a in answers] == [1] * N

        w2 = workers.start(redis_url, concurrency=50)
        results = await asyncio.gather(*(client.result(rid, timeout=60) for rid in ids))
        assert results == [i + 1 for i in range(N)]
        assert w2.running

        execs = await exec_counts(redis, ids)
        assert {rid: execs[rid].get("resumed", 0) for rid in ids} == dict.fromkeys(ids, 1)
        states = await asyncio.gather(*(client.state(rid) for rid in ids))
        assert {st.vertices["w"].status for st in states} == {"completed"}

        # an event sent again for a resolved wait changes nothing
        again = await client.send_event("chaos.go", {"v": -1}, key="0")
        assert again["resolved"] == 0
        assert await client.result(ids[0], timeout=5) == 1
