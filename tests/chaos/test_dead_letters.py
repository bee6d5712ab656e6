"""Messages that can never complete go to the dead-letter stream and fail their run
with a clear error: a message with garbage fields, and a node that kills its worker."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

import aioflow
from aioflow.store.keys import RunId
from tests.chaos.harness import (
    WorkerProc,
    Workers,
    dlq,
    exec_counts,
    pel_empty,
    stream_of,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.chaos

MAX_DELIVERIES = 2


async def test_poison_message_and_crashing_node_are_dead_lettered(
    redis_url: str, redis: Redis, workers: Workers
) -> None:
    env = {"AIOFLOW_MAX_DELIVERIES": str(MAX_DELIVERIES), "CHAOS_SLEEP": "0"}

    def start() -> WorkerProc:
        return workers.start(redis_url, concurrency=20, env=env)

    w = start()
    await w.ready()
    poison = await redis.xadd(stream_of("crashy"), {"junk": b"\xff\x00garbage", "x": "1"})
    async with aioflow.Client(redis_url) as client:
        before = [await client.submit("crashy", i) for i in range(10)]
        crash = await client.submit("crashy", -1)
        after = [await client.submit("crashy", i) for i in range(10, 20)]
        crash_key = RunId.parse(crash).key

        async def crash_dead_lettered() -> bool:
            return any(e.get("r") == crash_key for e in await dlq(redis, "crashy"))

        # restart the worker each time the node kills it, until the message is dead-lettered
        deaths = 0
        while True:
            await wait_until(
                functools.partial(_exited_or, w, crash_dead_lettered),
                timeout=15,
                what="the worker to die or the crashing message to be dead-lettered",
            )
            if w.running:
                break
            assert w.proc.wait() == 1  # os._exit(1) inside the node
            deaths += 1
            assert deaths <= MAX_DELIVERIES, "the crashing message was never dead-lettered"
            w = start()
        # delivered once, reclaimed once (max_deliveries=2), dead on the third delivery
        assert deaths == MAX_DELIVERIES
        assert (await exec_counts(redis, [crash]))[crash] == {"maybe_crash": MAX_DELIVERIES}

        with pytest.raises(aioflow.RunFailed) as info:
            await client.result(crash, timeout=10)
        err = info.value
        assert err.error_type == "DeadLetter"
        assert err.vertex == "maybe_crash"
        assert f"delivered {MAX_DELIVERIES + 1} times" in err.message
        assert f"max_deliveries={MAX_DELIVERIES}" in err.message
        state = await client.state(crash)
        assert state.status is aioflow.Status.FAILED

        others = before + after
        results = await asyncio.gather(*(client.result(r, timeout=15) for r in others))
        assert results == [x * 2 for x in range(20)]

    letters = await dlq(redis, "crashy")
    assert len(letters) == 2, letters
    by_id = {e["id"]: e for e in letters}
    junk = by_id[poison.decode() if isinstance(poison, bytes) else poison]
    assert "undecodable" in junk["reason"]
    assert junk["r"] == ""
    dead = next(e for e in letters if e["r"] == crash_key)
    assert dead["a"] == "maybe_crash"
    assert dead["deliveries"] == str(MAX_DELIVERIES + 1)
    assert "max_deliveries" in dead["reason"]
    assert w.running
    assert "dead-letter" in w.log()
    await wait_until(lambda: pel_empty(redis, "crashy"), timeout=10, what="empty PEL")


async def _exited_or(w: WorkerProc, cond: Callable[[], Awaitable[bool]]) -> bool:
    return not w.running or await cond()
