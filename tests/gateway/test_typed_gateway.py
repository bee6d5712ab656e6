"""A typed flow over HTTP: its input is validated at the door (422 with pydantic's
errors, no run created; a batch names the bad item), its schemas are in its
definition and in /openapi.json, and its result comes back as JSON of its type."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

import aioflow
from aioflow.definitions.types import schemas
from tests.gateway.test_gateway import gateway

ORDER_ID = "0b7e8a52-3c1f-4c0e-9a43-5f1f2a6d9e01"


class Line(BaseModel):
    sku: str
    qty: int = Field(ge=1)
    price: Decimal


class Order(BaseModel):
    order_id: UUID
    placed_at: datetime
    lines: list[Line]


class Receipt(BaseModel):
    order_id: UUID
    total: Decimal
    at: datetime


def orders() -> aioflow.Flow:
    flow = aioflow.Flow("orders")

    @flow.node
    async def price(order: Order) -> Receipt:
        total = sum((x.price * x.qty for x in order.lines), Decimal(0))
        return Receipt(order_id=order.order_id, total=total, at=order.placed_at)

    return flow


GOOD = {
    "order_id": ORDER_ID,
    "placed_at": "2026-12-07T10:00:00Z",
    "lines": [{"sku": "tea", "qty": 2, "price": "3.10"}, {"sku": "cup", "qty": 1, "price": 5}],
}
BAD = {"order_id": "nope", "placed_at": "2026-12-07T10:00:00Z", "lines": [{"sku": "tea", "qty": 0}]}


async def _runs(http: Any) -> list[Any]:
    resp = await http.get("/flow/orders/runs")
    assert resp.status == 200
    runs: list[Any] = (await resp.json())["runs"]
    return runs


async def test_a_valid_input_runs_and_its_result_is_json_of_the_return_type(
    redis_url: str,
) -> None:
    async with gateway([orders()], redis_url) as (http, _):
        resp = await http.post("/flow/orders?wait=10", json=GOOD)
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {
            "order_id": ORDER_ID,
            "total": "11.20",
            "at": "2026-12-07T10:00:00Z",
        }


async def test_an_invalid_input_is_422_with_the_errors_and_no_run(redis_url: str) -> None:
    async with gateway([orders()], redis_url) as (http, _):
        for path in ("/flow/orders", "/flow/orders?wait=5"):
            resp = await http.post(path, json=BAD)
            assert resp.status == 422, await resp.text()
            doc = await resp.json()
            assert doc["error"] == "invalid_input"
            where = {tuple(e["loc"]): e["type"] for e in doc["detail"]}
            assert where == {
                ("order_id",): "uuid_parsing",
                ("lines", 0, "qty"): "greater_than_equal",
                ("lines", 0, "price"): "missing",
            }
            assert all(isinstance(e["msg"], str) for e in doc["detail"])
        resp = await http.post("/flow/orders", json=None)  # no input at all
        assert resp.status == 422
        assert await _runs(http) == []


async def test_a_batch_with_an_invalid_item_names_it_and_submits_nothing(
    redis_url: str,
) -> None:
    async with gateway([orders()], redis_url) as (http, _):
        resp = await http.post("/flow/orders/batch", json=[GOOD, BAD, GOOD])
        assert resp.status == 400, await resp.text()
        doc = await resp.json()
        assert doc["error"] == "invalid_batch" and doc["index"] == 1
        assert "item 1" in doc["detail"]
        assert {tuple(e["loc"]) for e in doc["errors"]} >= {("order_id",)}
        assert await _runs(http) == []
        resp = await http.post("/flow/orders/batch", json=[GOOD, GOOD])
        assert resp.status == 202, await resp.text()


async def test_the_schemas_are_in_the_definition_and_the_document(redis_url: str) -> None:
    flow = orders()
    async with gateway([flow], redis_url) as (http, _):
        resp = await http.get("/flow/orders")
        assert resp.status == 200
        doc = await resp.json()
        expected = schemas(flow)
        assert doc["input_schema"] == expected["input"]
        assert doc["result_schema"] == expected["result"]
        assert doc["input_schema"]["title"] == "Order"
        assert "Line" in doc["input_schema"]["$defs"]

        api = await (await http.get("/openapi.json")).json()
        op = api["paths"]["/flow/orders"]["post"]
        assert op["operationId"] == "start_orders"
        body = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert body == "#/components/schemas/orders.input"
        line = api["components"]["schemas"]["orders.Line"]
        assert line["properties"]["qty"]["minimum"] == 1
