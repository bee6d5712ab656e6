"""Run priorities: the pure sharing of free slots, and runs on a real worker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

import aioflow
from aioflow.definitions.priority import Priority, plan_reads, shares
from aioflow.engine.engine import register
from aioflow.store import keys
from tests.engine_helpers import running
from tests.gateway.test_gateway import gateway

ALL = ["high", "default", "low"]


def test_shares_weighted_when_all_are_busy() -> None:
    assert shares(10, ALL, set(ALL)) == {"high": 6, "default": 3, "low": 1}
    assert shares(103, ALL, set(ALL)) == {"high": 61, "default": 31, "low": 11}
    # a few slots: none is left out
    assert shares(3, ALL, set(ALL)) == {"high": 1, "default": 1, "low": 1}
    assert shares(5, ALL, set(ALL)) == {"high": 3, "default": 1, "low": 1}
    s = shares(7, ALL, set(ALL))
    assert sum(s.values()) == 7 and s["high"] >= s["default"] >= s["low"]


def test_idle_priorities_get_a_probe_and_leave_their_share() -> None:
    # only default had messages: it gets everything but one probe each
    assert shares(50, ALL, {"default"}) == {"high": 1, "default": 48, "low": 1}
    # nothing was busy: weights over all
    assert shares(10, ALL, set()) == {"high": 6, "default": 3, "low": 1}
    assert shares(5, ["default"], set()) == {"default": 5}
    assert shares(0, ALL, set(ALL)) == {"high": 0, "default": 0, "low": 0}


def test_fewer_slots_than_priorities_go_round_six_three_one() -> None:
    got = {p: 0 for p in ALL}
    for tick in range(100):
        s = shares(1, ALL, set(ALL), tick)
        assert sum(s.values()) == 1
        for p, n in s.items():
            got[p] += n
    assert got == {"high": 60, "default": 30, "low": 10}
    s = shares(2, ALL, set(ALL), 0)
    assert sum(s.values()) == 2 and s["high"] == 1


def test_plan_reads_never_exceeds_free_slots() -> None:
    streams = {p: [f"{p}{i}" for i in range(4)] for p in ALL}
    for free in range(0, 40):
        for busy in (set(), {"low"}, set(ALL)):
            for tick in range(5):
                reads = plan_reads(free, streams, busy, tick)
                assert sum(r.count * len(r.streams) for r in reads) <= free
                for r in reads:
                    assert r.count >= 1 and len(set(r.streams)) == len(r.streams)
    # a share below the number of partitions reads a rotating subset
    reads = plan_reads(5, streams, {"high"}, 1)
    assert [(r.priority, r.streams, r.count) for r in reads] == [
        ("high", ("high1", "high2", "high3"), 1),
        ("default", ("default1",), 1),
        ("low", ("low1",), 1),
    ]


async def test_priority_streams_and_order(redis_url: str, redis: Redis) -> None:
    flow = aioflow.Flow("prio")
    order: list[tuple[str, str]] = []

    @flow.node
    async def first(data: dict[str, Any]) -> dict[str, Any]:
        order.append(("first", data["p"]))
        await asyncio.sleep(0.002)
        return data

    @flow.node(after=first)
    async def second(data: dict[str, Any]) -> str:
        order.append(("second", data["p"]))
        return str(data["p"])

    await register(redis, [flow])
    n = 20
    async with aioflow.Client(redis_url) as client:
        ids: dict[str, list[str]] = {}
        prios: tuple[Priority, ...] = ("low", "default", "high")
        for p in prios:  # the high ones last: FIFO would run them last
            ids[p] = [await client.submit(flow, {"p": p}, priority=p) for _ in range(n)]
        assert await redis.xlen(keys.stream("prio", 0, "high")) == n
        assert await redis.xlen(keys.stream("prio", 0, "low")) == n
        async with running([flow], redis_url, concurrency=2):
            for prio, run_ids in ids.items():
                for i in run_ids:
                    assert await client.result(i, timeout=20) == prio
        with pytest.raises(aioflow.InvalidPriority):
            await client.submit(flow, {}, priority="urgent")  # type: ignore[arg-type]

    def mean_position(vertex: str, p: str) -> float:
        pos = [i for i, o in enumerate(order) if o == (vertex, p)]
        return sum(pos) / len(pos)

    for v in ("first", "second"):  # children keep the run's priority
        assert mean_position(v, "high") < mean_position(v, "default") < mean_position(v, "low")
    # low still progresses while high has a backlog
    starts = [p for v, p in order if v == "first"]
    head = starts[:n]
    assert head.count("high") > head.count("default") > head.count("low") >= 1, head


async def test_priority_over_http(redis_url: str, redis: Redis) -> None:
    flow = aioflow.Flow("prio-http")

    @flow.node
    async def one(x: int) -> int:
        return x + 1

    async with gateway([flow], redis_url) as (http, _):
        resp = await http.post("/flow/prio-http?wait=10", json=1, headers={"X-Priority": "low"})
        assert resp.status == 200 and await resp.json() == 2
        run_id = resp.headers["X-Run-Id"]
        rid = keys.RunId.parse(run_id)
        assert await redis.hget(rid.run, "pr") == b"l"
        resp = await http.post("/flow/prio-http", json=1, headers={"X-Priority": "urgent"})
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_priority"
