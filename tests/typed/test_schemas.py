"""What annotations make of a flow's definition: schemas, versions, errors."""

from __future__ import annotations

from typing import Any

import pytest

import aioflow
from aioflow.definitions.plan import compile_dag
from aioflow.definitions.types import schemas
from aioflow.definitions.versions import version_of

from .models import Item, Order


def typed_flow(arg: Any = Order, ret: Any = list[Item]) -> aioflow.Flow:
    flow = aioflow.Flow("typed")

    def first(o: Order) -> list[Item]:
        return o.items

    first.__annotations__ = {"o": arg, "return": ret}
    flow.node("first", first)
    return flow


def test_schemas_are_the_entry_input_and_the_exit_result() -> None:
    got = schemas(typed_flow())
    assert got["input"] is not None and got["input"]["title"] == "Order"
    assert set(got["input"]["required"]) == {"id", "placed", "items", "total"}
    assert got["result"] is not None and got["result"]["type"] == "array"
    doc = typed_flow().describe()
    assert doc["input_schema"] == got["input"] and doc["result_schema"] == got["result"]


def test_unannotated_flows_describe_as_before() -> None:
    flow = aioflow.Flow("plain")

    @flow.node
    def first(x):  # type: ignore[no-untyped-def]
        return x

    assert schemas(flow) == {"input": None, "result": None}
    assert "input_schema" not in flow.describe() and "result_schema" not in flow.describe()
    assert compile_dag(flow).nodes["first"].types is None


def test_the_version_changes_with_a_schema() -> None:
    assert version_of(typed_flow()) == version_of(typed_flow())
    assert version_of(typed_flow()) != version_of(typed_flow(arg=Item))
    assert version_of(typed_flow()) != version_of(typed_flow(ret=Item))
    assert version_of(typed_flow()) != version_of(typed_flow(arg=Any, ret=Any))


def test_several_exits_give_an_object_and_subdags_are_looked_through() -> None:
    inner = aioflow.Dag()

    @inner.node
    def parse(o: Order) -> Order:
        return o

    flow = aioflow.Flow("several")
    flow.subdag("sub", inner)

    @flow.node(after="sub")
    def count(o: Order) -> int:
        return len(o.items)

    @flow.node(after="sub")
    def untyped(o):  # type: ignore[no-untyped-def]
        return o

    got = schemas(flow)
    assert got["input"] is not None and got["input"]["title"] == "Order"
    assert got["result"] == {
        "type": "object",
        "properties": {"count": {"type": "integer"}, "untyped": {}},
        "required": ["count", "untyped"],
    }


def test_an_annotation_that_does_not_resolve_names_flow_vertex_and_type() -> None:
    flow = aioflow.Flow("broken")

    def first(x: NoSuchType) -> int:  # type: ignore[name-defined]  # noqa: F821
        return 1

    flow.node("first", first)
    with pytest.raises(aioflow.DefinitionError, match=r"flow 'broken': node 'first'.*NoSuchType"):
        compile_dag(flow)


class Opaque:
    pass


def test_a_type_pydantic_cannot_convert_is_a_definition_error() -> None:
    flow = aioflow.Flow("opaque")

    def first(x: Opaque) -> int:
        return 1

    flow.node("first", first)
    with pytest.raises(aioflow.DefinitionError, match=r"node 'first'.*input type.*Opaque"):
        compile_dag(flow)


def test_only_the_input_and_return_annotations_are_read() -> None:
    flow = aioflow.Flow("ctx-typed")

    def first(x: int, ctx: OnlyForTypeCheckers) -> int:  # type: ignore[name-defined]  # noqa: F821
        return x

    flow.node("first", first)
    types = compile_dag(flow).nodes["first"].types
    assert types is not None and types.arg_type is int and types.ret_type is int


def test_partials_and_callable_objects_are_read_through() -> None:
    import functools

    class Scale:
        def __call__(self, x: Item) -> int:
            return x.qty

    def add(n: int, x: Order) -> int:
        return n

    flow = aioflow.Flow("indirect")
    flow.node("scale", Scale())
    flow.node("add", functools.partial(add, 1))
    plan = compile_dag(flow)
    scale, add_types = plan.nodes["scale"].types, plan.nodes["add"].types
    assert scale is not None and scale.arg_type is Item
    assert add_types is not None and add_types.arg_type is Order


def test_a_nested_dags_bad_annotation_names_the_flow_and_the_group() -> None:
    inner = aioflow.Dag()

    def parse(x: Opaque) -> int:
        return 1

    inner.node("parse", parse)
    flow = aioflow.Flow("nested-broken")
    flow.subdag("sub", inner)
    with pytest.raises(
        aioflow.DefinitionError, match=r"^flow 'nested-broken': subdag 'sub': dag: node 'parse'"
    ):
        compile_dag(flow)
