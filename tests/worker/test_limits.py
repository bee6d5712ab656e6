"""``max_value`` bounds a run's input (refused at submit) and a node's output (fails
the vertex); ``max_foreach`` bounds the width of a foreach. Both say which limit."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

import aioflow
from aioflow.engine.engine import Engine
from aioflow.gateway.routes import create_app
from tests.engine_helpers import running

T = 10.0


def make_flow() -> aioflow.Flow:
    flow = aioflow.Flow("big")

    @flow.node(retries=2)
    async def grow(n: int) -> str:
        return "x" * n

    return flow


async def test_large_input_is_refused_at_submit(redis_url: str, redis: Redis) -> None:
    flow = make_flow()
    async with running([flow], redis_url, max_value=1000) as s:
        app = create_app(
            s.redis, flows=[flow], settings=aioflow.Settings(redis_url=redis_url, max_value=1000)
        )
        async with TestClient(TestServer(app)) as http:
            resp = await http.post("/flow/big", data=b"y" * 1001)
            assert resp.status == 413, await resp.text()
            doc = await resp.json()
            assert doc["error"] == "value_too_large"
            assert "max_value=1000" in doc["detail"] and "1002 bytes" in doc["detail"]
            resp = await http.post("/flow/big?wait=5", json=10)
            assert resp.status == 200 and await resp.json() == "x" * 10
        engine = Engine(s.redis, max_value=1000)
        try:
            with pytest.raises(aioflow.LimitExceeded, match="max_value=1000"):
                await engine.submit("big", "y" * 1000)
        finally:
            await engine.close()
    assert int(await redis.zcard("af:{big:0}:i")) == 1  # only the small one


async def test_large_output_fails_the_vertex_without_retries(redis_url: str) -> None:
    async with running([make_flow()], redis_url, max_value=1000) as s:
        assert await s.client.execute("big", 900, timeout=T) == "x" * 900
        with pytest.raises(aioflow.RunFailed) as e:
            await s.client.execute("big", 2000, timeout=T)
    assert e.value.vertex == "grow" and e.value.error_type == "LimitExceeded"
    assert "'grow'" in e.value.message and "max_value=1000" in e.value.message
    assert e.value.attempts == 1  # the same output would be as large the next time


async def test_foreach_wider_than_max_foreach_fails(redis_url: str) -> None:
    flow = aioflow.Flow("wide")
    each = flow.foreach("each", lambda data: {str(i): i for i in range(data)})

    @each.node
    async def one(x: Any) -> Any:
        return x

    async with running([flow], redis_url, max_foreach=3) as s:
        assert await s.client.execute(flow, 3, timeout=T) == {"0": 0, "1": 1, "2": 2}
        with pytest.raises(aioflow.RunFailed) as e:
            await s.client.execute(flow, 4, timeout=T)
    assert e.value.vertex == "each" and e.value.error_type == "LimitExceeded"
    assert "4 items" in e.value.message and "max_foreach=3" in e.value.message
