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

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from aioflow.core import codec
from aioflow.core.errors import InvalidBatch, InvalidInput, LimitExceeded
from aioflow.definitions.model import Flow
from aioflow.definitions.plan import Plan, compile_dag
from aioflow.definitions.types import VertexTypes, entry_types
from aioflow.definitions.waits import WaitSpec

_entries: weakref.WeakKeyDictionary[Flow, tuple[Plan, list[VertexTypes]]] = (
    weakref.WeakKeyDictionary()
)


def _checks(flow: Flow) -> list[VertexTypes]:
    """The flow's annotated entries, found once per compiled plan (per submit: a lookup)."""
    plan = compile_dag(flow)
    hit = _entries.get(flow)
    if hit is None or hit[0] is not plan:
        hit = _entries[flow] = (plan, entry_types(flow))
    return hit[1]


def admit(flow: Flow | None, data: Any) -> Any:
    """The input to store for a run of ``flow`` on ``data``: ``data`` itself once every
    annotated entry accepts it (typed objects, such as a model instance, as JSON).
    Raises :class:`InvalidInput` with the first failing entry's errors."""
    if flow is None:
        return data
    for types in _checks(flow):
        data = types.admit(data)
    return data


def encode(flow: Flow | None, data: Any, max_value: int | None, name: str) -> bytes:
    """A new run's input as stored, checked: the size limit first (it is cheaper, and
    it protects the validation), then :func:`admit` for a held ``flow``. Raises
    :class:`LimitExceeded` or :class:`InvalidInput`; nothing is written either way."""
    try:
        value, admitted = codec.encode(data), False
    except TypeError:  # a typed object (a model instance...): its JSON once admitted
        if flow is None:
            raise
        value, admitted = codec.encode(admit(flow, data)), True
    if max_value is not None and len(value) > max_value:
        raise LimitExceeded(
            f"the input is {len(value)} bytes, larger than max_value={max_value}: "
            f"no run of flow {name!r} was started"
        )
    if not admitted:
        admit(flow, data)
    return value


def admit_many(flow: Flow | None, inputs: Sequence[Any]) -> list[Any]:
    """:func:`admit` for each item; raises :class:`InvalidBatch` naming the first bad one."""
    if flow is None:
        return list(inputs)
    checks = _checks(flow)
    out = []
    for i, data in enumerate(inputs):
        try:
            for types in checks:
                data = types.admit(data)
        except InvalidInput as e:
            raise InvalidBatch(f"item {i}: {e}", index=i, errors=e.errors) from None
        out.append(data)
    return out


def _event_types(dag: Any, name: str) -> list[VertexTypes]:
    """The ``data_type=`` adapters of the waits of ``dag`` (nested dags included) on
    the event ``name``."""
    out: list[VertexTypes] = []
    for v in dag.vertices.values():
        spec = getattr(v, "spec", None)
        if isinstance(spec, WaitSpec) and spec.event == name and spec.data is not None:
            out.append(spec.data)
        if v.dag is not None:
            out += _event_types(v.dag, name)
        for branch in v.branches.values():
            out += _event_types(branch, name)
    return out


def check_event(flows: Iterable[Flow], name: str, data: Any) -> None:
    """An event's data checked against the ``data_type=`` of every wait on ``name`` in
    ``flows`` (the flows this process holds); raises :class:`InvalidInput`, and the
    event is then not sent. Waits of flows it does not hold convert it in the worker."""
    for flow in flows:
        for types in _event_types(flow, name):
            types.load(data)
