"""Rerun from failure: only the failed branch and what follows it run again."""

from __future__ import annotations

from collections import Counter

import pytest

import aioflow
from tests.engine_helpers import running


def diamond(calls: Counter[str], broken: dict[str, bool]) -> aioflow.Flow:
    flow = aioflow.Flow("rerun-diamond")

    @flow.node
    async def top(x: int) -> int:
        calls["top"] += 1
        return x + 1

    @flow.node(after=top)
    async def left(x: int) -> int:
        calls["left"] += 1
        return x * 2

    @flow.node(after=top)
    async def right(x: int) -> int:
        calls["right"] += 1
        if broken["right"]:
            raise RuntimeError("right is broken")
        return x * 3

    @flow.node(after=[left, right])
    async def join(d: dict[str, int]) -> int:
        calls["join"] += 1
        return d["left"] + d["right"]

    return flow


async def test_rerun_failed_diamond_reuses_results(any_redis_url: str) -> None:
    calls: Counter[str] = Counter()
    broken = {"right": True}
    async with running([diamond(calls, broken)], any_redis_url) as s:
        rid = await s.client.submit("rerun-diamond", 1)
        with pytest.raises(aioflow.RunFailed) as info:
            await s.client.result(rid, timeout=10)
        assert info.value.vertex == "right"
        assert calls == Counter(top=1, left=1, right=1)
        with pytest.raises(aioflow.InvalidTransition):
            await s.client.pause(rid)

        broken["right"] = False
        assert await s.client.retry(rid) == 1
        assert await s.client.result(rid, timeout=10) == 2 * 2 + 2 * 3
        assert calls == Counter(top=1, left=1, right=2, join=1)
        state = await s.client.state(rid)
        assert state.status is aioflow.Status.COMPLETED
        assert state.error is None
        with pytest.raises(aioflow.InvalidTransition):
            await s.client.retry(rid)


async def test_rerun_inside_foreach(redis_url: str) -> None:
    flow = aioflow.Flow("rerun-foreach")
    fail = {"b": True}
    ran: Counter[str] = Counter()
    each = flow.foreach("each", lambda d: d)

    @each.node
    async def work(x: str) -> str:
        ran[x] += 1
        if fail.get(x):
            raise ValueError(x)
        return x.upper()

    async with running([flow], redis_url) as s:
        rid = await s.client.submit("rerun-foreach", {"1": "a", "2": "b", "3": "c"})
        with pytest.raises(aioflow.RunFailed):
            await s.client.result(rid, timeout=10)
        fail["b"] = False
        await s.client.retry(rid)
        assert await s.client.result(rid, timeout=10) == {"1": "A", "2": "B", "3": "C"}
        assert ran == Counter(a=1, b=2, c=1)
