"""Types the typed-flow tests convert into: one of each family."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from pydantic import BaseModel
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12


class Item(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    id: UUID
    placed: datetime
    items: list[Item]
    total: Decimal


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Pair(TypedDict):
    left: int
    right: str


class Both(BaseModel):
    """The aggregated input of a node whose data parents are ``order`` and ``point``."""

    order: Order
    point: Point
