"""A compound vertex (subdag, foreach, branch) executed once shows one attempt: its
open and its close are two messages of one execution."""

from __future__ import annotations

from typing import Any

import aioflow
from tests.engine_helpers import running


async def ident(data: Any) -> Any:
    return data


def split(data: Any) -> dict[str, Any]:
    return {"a": 1, "b": 2}


async def test_compound_vertices_count_one_attempt(redis_url: str) -> None:
    inner = aioflow.Dag()
    inner.node("x", ident)
    flow = aioflow.Flow("compound-attempts")
    flow.node("start", ident)
    flow.subdag("sub", inner, after="start")
    each = flow.foreach("each", split, after="sub")
    each.node("item", ident)
    br = flow.branch("route", lambda d: ["left"], conditions=["left", "right"], after="each")
    br["left"].node("l", ident)
    br["right"].node("r", ident)
    async with running([flow], redis_url) as s:
        rid = await s.client.submit(flow, 0)
        await s.client.result(rid, timeout=10)
        state = await s.client.state(rid)
    attempts = {a: v.attempts for a, v in state.vertices.items()}
    assert attempts["sub"] == 1
    assert attempts["each"] == 1
    assert attempts["route"] == 1
    assert set(attempts.values()) == {1}, attempts
