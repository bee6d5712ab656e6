"""A worker converts each annotated node's input into its annotation and serialises
its output to JSON, so the next annotated node gets its own type back."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest

import aioflow
from aioflow.definitions.plan import compile_dag
from tests.engine_helpers import running

from .models import Both, Item, Order, Pair, Point

ORDER = {
    "id": "0b7e5c1e-2f6b-4f0e-9a8c-0d1f2e3a4b5c",
    "placed": "2026-12-07T10:00:00Z",
    "items": [{"sku": "a", "qty": "2"}, {"sku": "b", "qty": 1}],
    "total": "12.50",
}
WHEN = dt.datetime(2026, 12, 7, 10, tzinfo=dt.UTC)
ID = uuid.UUID(str(ORDER["id"]))

# annotation, the JSON input, the value the node receives, the JSON output of its echo
FAMILIES: dict[str, tuple[Any, Any, Any, Any]] = {
    "model": (Item, {"sku": "a", "qty": "2"}, Item(sku="a", qty=2), {"sku": "a", "qty": 2}),
    "nested-models": (
        Order,
        ORDER,
        Order(
            id=ID,
            placed=WHEN,
            items=[Item(sku="a", qty=2), Item(sku="b", qty=1)],
            total=Decimal("12.50"),
        ),
        {**ORDER, "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}]},
    ),
    "dataclass": (Point, {"x": 1, "y": "2"}, Point(1, 2), {"x": 1, "y": 2}),
    "typeddict": (
        Pair,
        {"left": "3", "right": "r"},
        {"left": 3, "right": "r"},
        {"left": 3, "right": "r"},
    ),
    "list-of-models": (
        list[Item],
        [{"sku": "a", "qty": 1}],
        [Item(sku="a", qty=1)],
        [{"sku": "a", "qty": 1}],
    ),
    # python-mode dump, written by orjson (JSON mode would say Z): both read back the same
    "datetime": (dt.datetime, "2026-12-07T10:00:00Z", WHEN, "2026-12-07T10:00:00+00:00"),
    "uuid": (uuid.UUID, str(ID), ID, str(ID)),
    "decimal": (Decimal, "12.50", Decimal("12.50"), "12.50"),
    "bytes": (bytes, b"\x00raw", b"\x00raw", b"\x00raw"),  # kept raw, as untyped
}


@pytest.mark.parametrize("family", list(FAMILIES))
async def test_each_type_family_converts_in_and_out(redis_url: str, family: str) -> None:
    tp, given, received, output = FAMILIES[family]
    seen: list[Any] = []

    def echo(x: Any) -> Any:
        seen.append(x)
        return x

    echo.__annotations__ = {"x": tp, "return": tp}
    flow = aioflow.Flow(f"family-{family}")
    flow.node("echo", echo)
    async with running([flow], redis_url) as s:
        result = await s.client.execute(flow.name, given, timeout=10)  # by name: no door
    assert seen == [received] and type(seen[0]) is type(received)
    assert result == output


async def test_the_next_node_gets_its_declared_type_back(redis_url: str) -> None:
    flow = aioflow.Flow("typed-chain")

    @flow.node
    def parse(o: Order) -> Order:
        assert isinstance(o.items[0], Item) and o.placed == WHEN
        return o

    @flow.node(after=parse)
    def total(o: Order) -> Decimal:
        assert isinstance(o, Order) and isinstance(o.total, Decimal)
        return o.total * 2

    @flow.node(after=total)
    def when(d: Decimal) -> dict[str, Decimal | dt.datetime | uuid.UUID]:
        assert isinstance(d, Decimal)
        return {"total": d, "at": WHEN, "id": ID}

    async with running([flow], redis_url) as s:
        result = await s.client.execute(flow, ORDER, timeout=10)  # typed as the exit says
        stored = await s.client.execute(flow.name, ORDER, timeout=10)  # by name: its JSON
    assert result == {"total": Decimal("25.00"), "at": WHEN, "id": ID}
    assert stored == {"total": "25.00", "at": "2026-12-07T10:00:00Z", "id": ORDER["id"]}


async def test_aggregated_inputs_convert_per_parent(redis_url: str) -> None:
    flow = aioflow.Flow("typed-join")

    @flow.node
    def order(d: dict[str, Any]) -> Order:
        return Order.model_validate(d["order"])

    @flow.node
    def point(d: dict[str, Any]) -> Point:
        return Point(**d["point"])

    @flow.node(after=[order, point])
    def both(b: Both) -> str:
        assert isinstance(b.order, Order) and isinstance(b.point, Point)
        return f"{b.order.total} at {b.point.x},{b.point.y}"

    @flow.node(after=[order, point])
    def per_value(b: dict[str, dict[str, Any]]) -> list[str]:
        return sorted(b)

    data = {"order": ORDER, "point": {"x": 1, "y": 2}}
    async with running([flow], redis_url) as s:
        result = await s.client.execute(flow, data, timeout=10)
    assert result == {"both": "12.50 at 1,2", "per_value": ["order", "point"]}


async def test_bad_input_reaching_a_node_fails_the_run_once(redis_url: str) -> None:
    flow = aioflow.Flow("typed-late")

    @flow.node(retries=3)
    def parse(o: Order) -> int:
        return len(o.items)

    async with running([flow], redis_url) as s:
        # by name, from a client that does not hold the flow: nothing checks at the door
        with pytest.raises(aioflow.RunFailed) as e:
            await s.client.execute(flow.name, {"id": "nope"}, timeout=10)
    assert e.value.error_type == "InvalidInput" and e.value.attempts == 1
    assert "node 'parse': invalid input" in e.value.message


async def test_an_output_that_does_not_fit_its_return_type_fails_the_vertex(
    redis_url: str,
) -> None:
    flow = aioflow.Flow("typed-out")

    @flow.node
    def count(x: Any) -> int:
        return x  # type: ignore[no-any-return]

    async with running([flow], redis_url) as s:
        assert await s.client.execute(flow, 3, timeout=10) == 3
        assert await s.client.execute(flow, "4", timeout=10) == 4  # lax, as the input
        with pytest.raises(aioflow.RunFailed) as e:
            await s.client.execute(flow, "four", timeout=10)
    assert e.value.error_type == "ValidationError" and e.value.vertex == "count"


async def test_unannotated_nodes_are_untouched(redis_url: str) -> None:
    flow = aioflow.Flow("untyped")
    seen: list[Any] = []

    @flow.node
    def plain(x):  # type: ignore[no-untyped-def]
        seen.append(x)
        return ("a", x)

    @flow.node(after=plain)
    def loose(x: Any) -> Any:
        seen.append(x)
        return x

    plan = compile_dag(flow)
    assert plan.nodes["plain"].types is None and plan.nodes["loose"].types is None
    data = {"when": "2026-12-07T10:00:00Z", "n": "1"}
    async with running([flow], redis_url) as s:
        assert await s.client.execute(flow, data, timeout=10) == ["a", data]
    assert seen == [data, ["a", data]]


async def test_an_on_failure_replacement_is_serialised_as_the_output(redis_url: str) -> None:
    flow = aioflow.Flow("typed-fallback")

    def fallback(error: BaseException, data: Any, ctx: aioflow.Context) -> Decimal:
        return Decimal("1.5")

    @flow.node(on_failure=fallback)
    def price(x: int) -> Decimal:
        raise RuntimeError("no price")

    @flow.node(after=price)
    def double(d: Decimal) -> Decimal:
        assert isinstance(d, Decimal)
        return d * 2

    async with running([flow], redis_url) as s:
        assert await s.client.execute(flow, 1, timeout=10) == Decimal("3.0")


async def test_loose_return_types_keep_the_codec_rules(redis_url: str) -> None:
    flow = aioflow.Flow("typed-loose")

    @flow.node
    def out(x: int) -> dict[str, Any]:
        return {"blob": b"\x00\xff", "n": float("nan") if x else 1.5}

    async with running([flow], redis_url) as s:
        # bytes stay bytes (JSON mode would make text of them)...
        assert await s.client.execute(flow, 0, timeout=10) == {"blob": b"\x00\xff", "n": 1.5}
        # ...and a NaN is refused as ever, not written as null
        with pytest.raises(aioflow.RunFailed, match="is nan, which JSON cannot hold"):
            await s.client.execute(flow, 1, timeout=10)
