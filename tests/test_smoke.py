from __future__ import annotations

import aioflow
from tests.engine_helpers import running


async def test_chain_runs(redis_url: str) -> None:
    flow = aioflow.Flow("chain")

    @flow.node
    async def one(x: int) -> int:
        return x + 1

    @flow.node(after=one)
    async def two(x: int) -> int:
        return x * 10

    async with running([flow], redis_url) as s:
        assert await s.client.execute("chain", 1, timeout=10) == 20
