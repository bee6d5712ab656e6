"""A foreach over 10,000 items: the right result, the join runs exactly once, and
the finished run leaves no key of its own without a TTL."""

from __future__ import annotations

from typing import Any

import aioflow
from aioflow.store.keys import RunId
from tests.engine_helpers import running

N = 10_000


async def test_foreach_over_ten_thousand_items(any_redis_url: str) -> None:
    calls = {"split": 0, "item": 0, "aggregate": 0, "join": 0}
    items_seen: set[str] = set()

    def split(n: int) -> dict[int, int]:
        calls["split"] += 1
        return {i: i for i in range(n)}

    async def square(value: int) -> int:
        calls["item"] += 1
        items_seen.add(str(value))
        return value * value

    def total(results: dict[str, int]) -> dict[str, Any]:
        calls["aggregate"] += 1
        return {"count": len(results), "sum": sum(results.values()), "k9999": results["9999"]}

    async def join(data: dict[str, Any]) -> dict[str, Any]:
        calls["join"] += 1
        return data

    flow = aioflow.Flow("big")
    flow.node("start", lambda n: n)
    flow.node("side", lambda n: -n)
    each = flow.foreach("each", split, after="start", aggregate=total)
    each.node("square", square)
    flow.node("join", join, after=["each", "side"])

    flow_all = aioflow.Flow("big-all")
    each_all = flow_all.foreach("each", split)
    each_all.node("square", square)

    async with running([flow, flow_all], any_redis_url, concurrency=200) as s:
        run_id = await s.client.submit(flow, N)
        result = await s.client.result(run_id, timeout=60)

        assert result == {
            "each": {"count": N, "sum": sum(i * i for i in range(N)), "k9999": 9999 * 9999},
            "side": -N,
        }
        assert calls["join"] == 1
        assert calls["split"] == 1
        assert items_seen == {str(i) for i in range(N)}
        assert calls["item"] >= N  # at least once each (exactly, barring redelivery)

        # the engine's own {key: result} for all 10,000 keys, keys stringified
        calls["item"] = 0
        result_all = await s.client.execute(flow_all, N, timeout=60)
        assert result_all == {str(i): i * i for i in range(N)}
        assert calls["item"] >= N

        # nothing of the finished runs is left without an expiry
        ttl = await s.redis.ttl(RunId.parse(run_id).run)
        assert 0 < ttl <= 86400
        shared = {"af:flows", "af:workers"}  # registry and heartbeats: bounded, no TTL
        for name in ("big", "big-all"):
            parts = (await s.client.engine.flow_info(name)).partitions
            for p in range(parts):
                tag = f"af:{{{name}:{p}}}"
                shared |= {f"{tag}:{k}" for k in ("q", "qh", "ql", "z", "i", "dlq")}
            shared |= {f"af:fv:{{{name}}}", f"af:fvseen:{{{name}}}"}  # the version registry
        checked = 0
        async for raw in s.redis.scan_iter(match="af:*", count=1000):
            key = raw.decode()
            if key in shared:
                continue
            checked += 1
            assert await s.redis.ttl(key) > 0, f"{key} has no TTL"
        assert checked >= 2  # both run hashes were looked at
    assert calls["aggregate"] == 1  # the foreach's join: once, over all 10,000 results
