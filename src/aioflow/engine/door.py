"""Validation at the door: a new run's input checked against its flow's entry
annotations before anything is written, so a bad input raises
:class:`~aioflow.InvalidInput` (``submit_many``: :class:`~aioflow.InvalidBatch`
naming the item) and no run exists.

It needs the :class:`~aioflow.Flow` object, which an engine holds for a flow
object submitted to it and for the flows given to :meth:`Catalog.hold
<aioflow.engine.catalog.Catalog.hold>` (a gateway's app flows), and only while
the version a run pins is that object's: a name whose newest served version is
another one is not checked here (its first node's conversion fails the run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aioflow.core.errors import InvalidBatch, InvalidInput
from aioflow.definitions.model import Flow
from aioflow.definitions.types import entry_types


def admit(flow: Flow | None, data: Any) -> Any:
    """The input to store for a run of ``flow`` on ``data``: ``data`` itself once every
    annotated entry accepts it (typed objects, such as a model instance, as JSON).
    Raises :class:`InvalidInput` with the first failing entry's errors."""
    if flow is None:
        return data
    for types in entry_types(flow):
        data = types.admit(data)
    return data


def admit_many(flow: Flow | None, inputs: Sequence[Any]) -> list[Any]:
    """:func:`admit` for each item; raises :class:`InvalidBatch` naming the first bad one."""
    if flow is None:
        return list(inputs)
    checks = entry_types(flow)
    out = []
    for i, data in enumerate(inputs):
        try:
            for types in checks:
                data = types.admit(data)
        except InvalidInput as e:
            raise InvalidBatch(f"item {i}: {e}", index=i, errors=e.errors) from None
        out.append(data)
    return out
