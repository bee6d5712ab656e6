"""The limit and rate scripts on their own, and the crash between acquiring a slot
and starting the node (in-process workers on a real Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

import aioflow
from aioflow.definitions.policy import Rate
from aioflow.definitions.priority import Priority
from aioflow.engine.engine import register
from aioflow.store import keys
from aioflow.store.scripts import SCRIPTS
from tests.engine_helpers import running
from tests.helpers import wait_until

LIM = "af:lim:{t:v}"


async def _lim(redis: Redis, op: str, now: int, *args: Any, limit: int = 2) -> Any:
    if op == "acquire" and len(args) == 2:
        args = (*args, "tok")  # the message id taking the slot
    if op == "release":
        args = tuple(x for h in args for x in (h, "tok"))
    return await SCRIPTS.call(redis, "limit", LIM, op, now, 1000, limit, *args)


async def _try(redis: Redis, now: int, holder: str, where: str, *, limit: int = 2) -> Any:
    """Acquire as a worker does: on 'wait' the message is parked, then registered."""
    res = await _lim(redis, "acquire", now, holder, where, limit=limit)
    if res[0] == b"wait":
        res[2] += await _lim(redis, "wait", now, holder, where, limit=limit)
    return res


async def test_slots_waiters_and_reservations(redis: Redis) -> None:
    assert (await _lim(redis, "acquire", 0, "h1", "z\nm1"))[0] == b"go"
    assert (await _lim(redis, "acquire", 0, "h2", "z\nm2"))[0] == b"go"
    assert await _try(redis, 0, "h3", "z\nm3") == [b"wait", 0, []]
    assert await _try(redis, 0, "h4", "z\nm4") == [b"wait", 1, []]
    # a waiter asking again keeps its place; a holder asking again keeps its slot
    assert await _try(redis, 1, "h3", "z\nm3b") == [b"wait", 0, []]
    assert (await _lim(redis, "acquire", 1, "h1", "z\nm1"))[0] == b"go"
    assert await redis.zcard(f"{LIM}:h") == 2
    # a release reserves the slot for the oldest waiter and says where it sleeps
    assert await _lim(redis, "release", 2, "h1") == [b"h3", b"z\nm3b"]
    assert await _try(redis, 2, "h5", "z\nm5") == [b"wait", 1, []]
    # nobody came for the reservation: it goes to the next waiter
    assert await _lim(redis, "unreserve", 3, "h3") == [b"h4", b"z\nm4"]
    assert (await _lim(redis, "acquire", 3, "h4", "z\nm4"))[0] == b"go"
    # unreserving a slot already taken changes nothing
    assert await _lim(redis, "unreserve", 4, "h4") == []
    assert await redis.zcard(f"{LIM}:h") == 2


async def test_a_slot_freed_while_parking_goes_to_the_parked(redis: Redis) -> None:
    assert (await _lim(redis, "acquire", 0, "h1", "z\nm1", limit=1))[0] == b"go"
    assert (await _lim(redis, "acquire", 0, "h2", "z\nm2", limit=1))[0] == b"wait"
    # released before h2's message sleeps in its delayed set: nobody to wake yet
    assert await _lim(redis, "release", 1, "h1", limit=1) == []
    # registering once parked finds the free slot and wakes itself
    assert await _lim(redis, "wait", 2, "h2", "z\nm2", limit=1) == [b"h2", b"z\nm2"]


async def test_a_late_release_does_not_free_a_later_delivery(redis: Redis) -> None:
    assert (await _lim(redis, "acquire", 0, "h1", "z\nm1", "first", limit=1))[0] == b"go"
    # the same vertex again (a retry, back from a rate wait) before that release landed
    assert (await _lim(redis, "acquire", 1, "h1", "z\nm1", "second", limit=1))[0] == b"go"
    await SCRIPTS.call(redis, "limit", LIM, "release", 2, 1000, 1, "h1", "first")
    assert (await _try(redis, 3, "h2", "z\nm2", limit=1))[0] == b"wait"
    await SCRIPTS.call(redis, "limit", LIM, "release", 4, 1000, 1, "h1", "second")
    assert await redis.zrange(f"{LIM}:r", 0, -1) == [b"h2"]


async def test_expired_holders_free_their_slots(redis: Redis) -> None:
    await _lim(redis, "acquire", 0, "h1", "z\nm1", limit=1)
    assert (await _try(redis, 500, "h2", "z\nm2", limit=1))[0] == b"wait"
    # renewed, h1 lives on
    await _lim(redis, "renew", 900, "h1", limit=1)
    assert (await _try(redis, 1500, "h3", "z\nm3", limit=1))[0] == b"wait"
    # not renewed (its worker died): past its lease the oldest waiter gets the slot
    res = await _lim(redis, "acquire", 2000, "h3", "z\nm3", limit=1)
    assert res == [b"wait", 0, [b"h2", b"z\nm2"]]


async def test_token_bucket_queues_waiters_in_time(redis: Redis) -> None:
    async def take(now: int, holder: str) -> int:
        return int(await SCRIPTS.call(redis, "rate", "af:rate:{t:v}", now, "0.002", 2, holder))

    assert [await take(0, "a"), await take(0, "b")] == [0, 0]  # the burst
    assert await take(0, "c") == 500
    assert await take(0, "d") == 1000
    assert await take(100, "c") == 400  # asking early: still its own token
    assert await take(500, "c") == 0  # its token, not a new one
    assert await take(500, "e") == 1000  # behind d
    assert await take(3000, "f") == 0  # refilled


def test_limit_options_are_checked() -> None:
    f = aioflow.Flow("f")

    async def n(data: Any) -> Any:
        return data

    for kw in (
        {"concurrency": 0},
        {"concurrency": True},
        {"concurrency_key": str},
        {"concurrency": 1, "concurrency_key": "x"},
        {"rate": "5/d"},
        {"rate": "0/s"},
        {"rate": 5},
        {"rate_key": str},
    ):
        with pytest.raises(aioflow.DefinitionError):
            f.node("n", n, **kw)
    f.node("n", n, concurrency=3, concurrency_key=str, rate="10/m", rate_key=str)
    assert f.vertices["n"].rate == Rate(10, 60.0)


async def test_crash_between_acquire_and_start(redis_url: str, redis: Redis) -> None:
    flow = aioflow.Flow("onebyone")
    running_now: list[int] = [0, 0]  # current, max

    @flow.node(concurrency=1)
    async def only(data: int) -> int:
        running_now[0] += 1
        running_now[1] = max(running_now[1], running_now[0])
        await asyncio.sleep(0.05)
        running_now[0] -= 1
        return data

    await register(redis, [flow])
    async with aioflow.Client(redis_url) as client:
        first = await client.submit(flow, 1)
        # a worker reads it, takes its slot (a long lease) and dies before starting it
        stream = keys.stream("onebyone", 0)
        entries: Any = await redis.xreadgroup(keys.GROUP, "dead", {stream: ">"}, count=1)
        uid = first.split(".")[-1]
        res = await SCRIPTS.call(
            redis,
            "limit",
            "af:lim:{onebyone:only}",
            "acquire",
            0,
            10**15,
            1,
            f"{uid}|only",
            "",
            entries[0][1][0][0],
        )
        assert res[0] == b"go"
        second = await client.submit(flow, 2)
        async with running([flow], redis_url, visibility_timeout=0.5):
            # reclaimed after 0.5 s, the message finds its own slot; the second waits for it
            assert await client.result(first, timeout=10) == 1
            assert await client.result(second, timeout=10) == 2
        assert running_now[1] == 1
        await wait_until(
            lambda: _empty(redis, "af:lim:{onebyone:only}:h"), timeout=2, what="slot released"
        )


async def _empty(redis: Redis, key: str) -> bool:
    return int(await redis.zcard(key)) == 0


async def test_limits_and_priorities_on_one_redis_and_a_cluster(any_redis_url: str) -> None:
    flow = aioflow.Flow("limited", partitions=3)
    now: dict[str, int] = {}
    peak: dict[str, int] = {}

    @flow.node(concurrency=1, concurrency_key=lambda d: d["k"], rate="200/s")
    async def one_per_key(data: dict[str, Any]) -> str:
        k = data["k"]
        now[k] = now.get(k, 0) + 1
        peak[k] = max(peak.get(k, 0), now[k])
        await asyncio.sleep(0.01)
        now[k] -= 1
        return str(k)

    @flow.node(after=one_per_key)
    async def after(k: str) -> str:
        return k * 2

    async with running([flow], any_redis_url, workers=2, concurrency=20) as stack:
        prios: list[Priority] = ["high", "default", "low"]
        ids = [
            await stack.client.submit(flow, {"k": f"k{i % 3}"}, priority=prios[i % 3])
            for i in range(24)
        ]
        outs = [await stack.client.result(i, timeout=20) for i in ids]
    assert outs == [f"k{i % 3}" * 2 for i in range(24)]
    assert peak == {"k0": 1, "k1": 1, "k2": 1}


async def test_stopped_and_paused_waiters_pass_their_turn(redis_url: str, redis: Redis) -> None:
    flow = aioflow.Flow("turns")
    gate = asyncio.Event()
    started: list[int] = []

    @flow.node(concurrency=1)
    async def only(x: int) -> int:
        started.append(x)
        if x == 0:
            await gate.wait()
        return x

    async def waiting(n: int) -> bool:
        return int(await redis.zcard("af:lim:{turns:only}:w")) == n

    # long leases and backstops: only the wake-ups can make this test pass in time
    async with running([flow], redis_url, visibility_timeout=30) as stack:
        client = stack.client
        first = await client.submit(flow, 0)
        await wait_until(lambda: started == [0], what="the first holding the slot")
        stopped, paused, last = [await client.submit(flow, x) for x in (1, 2, 3)]
        await wait_until(lambda: waiting(3), what="three waiting")
        assert (await client.state(stopped)).vertices["only"].status == "waiting"
        await client.stop(stopped)
        await client.pause(paused)
        gate.set()
        assert await client.result(first, timeout=5) == 0
        assert await client.result(last, timeout=5) == 3
        assert started == [0, 3]
        await client.resume(paused)
        assert await client.result(paused, timeout=5) == 2
        assert (await client.state(stopped)).status == aioflow.Status.STOPPED
        assert started == [0, 3, 2]
