"""Validation at the door: a bad input to a flow the engine holds raises InvalidInput
(submit_many: InvalidBatch naming the item) and no run is created."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

import aioflow
from tests.engine_helpers import Stack, running

from .models import Item, Order
from .test_conversion import ID, ORDER, WHEN


def orders() -> aioflow.Flow:
    flow = aioflow.Flow("typed-door")

    @flow.node
    def parse(o: Order) -> Order:
        return o

    @flow.node(after=parse)
    def count(o: Order) -> int:
        return sum(i.qty for i in o.items)

    return flow


BAD = {**ORDER, "id": "not-a-uuid", "items": [{"sku": "a"}]}


async def run_exists(s: Stack, run_id: str, flow: aioflow.Flow) -> bool:
    rid = await s.client.engine.run_id(run_id, flow)
    return bool(await s.redis.exists(rid.run))


async def test_a_bad_input_raises_invalid_input_and_creates_no_run(redis_url: str) -> None:
    flow = orders()
    async with running([flow], redis_url) as s:
        with pytest.raises(aioflow.InvalidInput) as e:
            await s.client.submit(flow, BAD, run_id="bad-1")
        assert not await run_exists(s, "bad-1", flow)
        with pytest.raises(aioflow.InvalidInput):
            await s.client.execute(flow, BAD, run_id="bad-2", timeout=10)
        assert not await run_exists(s, "bad-2", flow)
        assert await s.client.execute(flow, ORDER, run_id="good", timeout=10) == 3
    errors = e.value.errors
    assert [(err["type"], err["loc"]) for err in errors] == [
        ("uuid_parsing", ["id"]),
        ("missing", ["items", 0, "qty"]),
    ]
    assert orjson.loads(orjson.dumps(errors)) == errors  # JSON-safe as it is
    assert "node 'parse': invalid input: id:" in str(e.value)


async def test_a_held_flow_is_checked_by_name_but_only_at_its_own_version(
    redis_url: str,
) -> None:
    flow = orders()
    async with running([flow], redis_url) as s:
        other = aioflow.Client(redis_url)
        try:
            # by name, without the flow object: the run starts and its first node fails it
            rid = await other.submit(flow.name, BAD)
            with pytest.raises(aioflow.RunFailed, match="InvalidInput"):
                await other.result(rid, timeout=10)
            other.engine.catalog.hold([flow])  # as the gateway holds its app's flows
            with pytest.raises(aioflow.InvalidInput):
                await other.submit(flow.name, BAD, run_id="held")
            assert not await run_exists(s, "held", flow)
            changed = orders()
            changed.node("extra", lambda x: x, after="count")
            other.engine.catalog.hold([changed])  # not the version a name pins now
            await other.submit(flow.name, BAD, run_id="unchecked")
            assert await run_exists(s, "unchecked", flow)
        finally:
            await other.close()


async def test_submit_many_names_the_failing_item_and_submits_nothing(redis_url: str) -> None:
    flow = orders()
    ids = ["m0", "m1", "m2"]
    async with running([flow], redis_url) as s:
        with pytest.raises(aioflow.InvalidBatch) as e:
            await s.client.submit_many(flow, [ORDER, ORDER, BAD], run_ids=ids)
        for run_id in ids:
            assert not await run_exists(s, run_id, flow)
    assert e.value.index == 2 and str(e.value).startswith("item 2: ")
    assert [err["loc"] for err in e.value.errors] == [["id"], ["items", 0, "qty"]]


async def test_typed_objects_go_in_and_come_out(redis_url: str) -> None:
    flow = aioflow.Flow("typed-objects")

    @flow.node
    def echo(o: Order) -> Order:
        return o

    order = Order(id=ID, placed=WHEN, items=[Item(sku="a", qty=2)], total=Decimal("1.5"))
    async with running([flow], redis_url) as s:
        got = await s.client.execute(flow, order, timeout=10)
        assert got == order and isinstance(got, Order)  # the exit's return annotation
        as_json: Any = await s.client.execute(flow.name, order.model_dump(mode="json"), timeout=10)
        assert as_json["total"] == "1.5"
        rid = await s.client.submit(flow, order)
        assert await s.client.result(rid, timeout=10, flow=flow) == order
        items = await s.client.result(rid, timeout=10, result_type=dict[str, Any])
        assert items["items"] == [{"sku": "a", "qty": 2}]
        [pair] = await s.client.submit_many(flow, [order])
        assert await s.client.result(pair, timeout=10, result_type=Order) == order
