"""Typed orders: pydantic models in, validation at the door, typed results out.

Each node's first parameter's annotation converts its input (the order's id
becomes a UUID, its time a datetime, its prices Decimals) and its return
annotation serialises its output as JSON (Decimal and UUID as strings, datetime
as ISO 8601), so the next node gets the type it declares back. An input that
does not match ``Order`` is refused before any run exists. Try it::

    aioflow dev examples/typed_orders.py:app
    curl -H 'content-type: application/json' 'localhost:8080/flow/orders?wait=5' -d '{
        "order_id": "0b7e8a52-3c1f-4c0e-9a43-5f1f2a6d9e01",
        "placed_at": "2026-12-07T10:00:00Z",
        "lines": [{"sku": "tea", "qty": 2, "price": "3.10"}]}'

A bad input (``"qty": 0``, an id that is no UUID) answers ``422 invalid_input``
with the list of what is wrong; ``GET /flow/orders`` and ``/openapi.json`` show
the input and result schemas, and the dashboard's form checks them.
"""

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

import aioflow

flow = aioflow.Flow("orders")

VAT = Decimal("0.20")


class Line(BaseModel):
    sku: str = Field(min_length=1, max_length=32)
    qty: int = Field(ge=1, le=1000)
    price: Decimal = Field(ge=0, decimal_places=2)


class Order(BaseModel):
    order_id: UUID
    placed_at: datetime
    lines: list[Line] = Field(min_length=1)
    shipping: Literal["standard", "express"] = "standard"


class Priced(BaseModel):
    order_id: UUID
    placed_at: datetime
    net: Decimal
    vat: Decimal
    shipping: Literal["standard", "express"]


class Receipt(BaseModel):
    order_id: UUID
    total: Decimal
    deliver_by: datetime


@flow.node
async def price(order: Order) -> Priced:
    net = sum((line.price * line.qty for line in order.lines), Decimal("0"))
    vat = (net * VAT).quantize(Decimal("0.01"))
    return Priced(
        order_id=order.order_id,
        placed_at=order.placed_at,
        net=net,
        vat=vat,
        shipping=order.shipping,
    )


@flow.node(after=price)
async def receipt(priced: Priced) -> Receipt:
    # priced arrives as a Priced again: Decimals and a datetime, not strings
    days = 1 if priced.shipping == "express" else 5
    return Receipt(
        order_id=priced.order_id,
        total=priced.net + priced.vat,
        deliver_by=priced.placed_at + timedelta(days=days),
    )


app = aioflow.App(flows=[flow])
