"""A definition is validated when it is built: each fault raises DefinitionError
with a message that names the culprit."""

from __future__ import annotations

import re
from typing import Any

import pytest

import aioflow


async def _one(x: Any) -> Any:
    return x


def _chain(name: str = "f") -> aioflow.Flow:
    flow = aioflow.Flow(name)
    flow.node("a", _one)
    flow.node("b", _one, after="a")
    flow.node("c", _one, after="b")
    return flow


def test_valid_definition_builds_and_compiles() -> None:
    flow = _chain()
    flow.node("d", _one, after=["a", "c"])
    aioflow.App(flows=[flow], redis_url="redis://127.0.0.1:1/0")
    desc = flow.describe()
    assert desc["name"] == "f"
    assert desc["dag"]["entries"] == ["a"]
    assert desc["dag"]["exits"] == ["d"]


def test_cycle_names_its_path() -> None:
    flow = _chain()
    with pytest.raises(aioflow.DefinitionError) as exc:
        flow.edge("c", "a")
    msg = str(exc.value)
    assert "cycle" in msg
    assert "c -> a -> b -> c" in msg
    # the refused edge was not added: the flow is still a valid chain
    assert [(e.src, e.dst) for e in flow.edges] == [("a", "b"), ("b", "c")]
    aioflow.App(flows=[flow], redis_url="redis://127.0.0.1:1/0")


def test_cycle_by_function_reference() -> None:
    flow = aioflow.Flow("f")

    @flow.node
    async def first(x: int) -> int:
        return x

    @flow.node(after=first)
    async def second(x: int) -> int:
        return x

    with pytest.raises(aioflow.DefinitionError, match="second -> first -> second"):
        flow.edge(second, first)


def test_edge_to_self() -> None:
    flow = _chain()
    with pytest.raises(aioflow.DefinitionError) as exc:
        flow.edge("b", "b")
    assert "'b'" in str(exc.value)
    assert "b -> b" in str(exc.value)


def test_unknown_vertex_in_after() -> None:
    flow = _chain()
    with pytest.raises(aioflow.DefinitionError) as exc:
        flow.node("d", _one, after=["a", "nope"])
    msg = str(exc.value)
    assert "'nope'" in msg
    assert "'d'" in msg  # the vertex whose after= is wrong
    assert "d" not in flow.vertices  # nothing half-added


def test_unknown_vertex_in_decorator_after() -> None:
    flow = aioflow.Flow("f")
    with pytest.raises(aioflow.DefinitionError, match="'ghost'"):

        @flow.node(after="ghost")
        async def n(x: int) -> int:
            return x


@pytest.mark.parametrize(("src", "dst", "culprit"), [("a", "zz", "zz"), ("yy", "a", "yy")])
def test_unknown_vertex_in_edge(src: str, dst: str, culprit: str) -> None:
    flow = _chain()
    with pytest.raises(aioflow.DefinitionError) as exc:
        flow.edge(src, dst)
    assert repr(culprit) in str(exc.value)


def test_function_that_is_not_a_vertex() -> None:
    flow = _chain()

    async def stranger(x: int) -> int:
        return x

    with pytest.raises(aioflow.DefinitionError, match="stranger"):
        flow.edge("a", stranger)


def test_duplicate_vertex_name() -> None:
    flow = _chain()
    with pytest.raises(aioflow.DefinitionError) as exc:
        flow.node("b", _one, after="a")
    assert "duplicate" in str(exc.value)
    assert "'b'" in str(exc.value)


def test_duplicate_vertex_name_by_decorator() -> None:
    flow = aioflow.Flow("f")

    @flow.node
    async def step(x: int) -> int:
        return x

    with pytest.raises(aioflow.DefinitionError, match="'step'"):

        @flow.node("step")
        async def other(x: int) -> int:
            return x


@pytest.mark.parametrize("name", ["", "has space", "-leading", "_leading", "a/b", "x" * 65, "é"])
def test_invalid_vertex_name(name: str) -> None:
    flow = aioflow.Flow("f")
    with pytest.raises(aioflow.DefinitionError) as exc:
        flow.node(name, _one)
    assert repr(name) in str(exc.value)
    assert not flow.vertices


def test_longest_valid_vertex_name() -> None:
    flow = aioflow.Flow("f")
    flow.node("x" * 64, _one)
    assert "x" * 64 in flow.vertices


@pytest.mark.parametrize("name", ["", "Upper", "has space", "-x", "a.b", "a:b", "f" * 65, "{x}"])
def test_invalid_flow_name(name: str) -> None:
    with pytest.raises(aioflow.DefinitionError) as exc:
        aioflow.Flow(name)
    assert repr(name) in str(exc.value)


def test_empty_flow_refused_by_app() -> None:
    empty = aioflow.Flow("empty-flow")
    with pytest.raises(aioflow.DefinitionError) as exc:
        aioflow.App(flows=[empty], redis_url="redis://127.0.0.1:1/0")
    msg = str(exc.value)
    assert "empty-flow" in msg
    assert "entry" in msg


def test_ambiguous_function_reference() -> None:
    flow = aioflow.Flow("f")

    async def shared(x: int) -> int:
        return x

    flow.node("one", shared)
    flow.node("two", shared)
    with pytest.raises(aioflow.DefinitionError) as exc:
        flow.node("three", _one, after=shared)
    msg = str(exc.value)
    assert "ambiguous" in msg
    assert "shared" in msg
    assert "one" in msg and "two" in msg
    with pytest.raises(aioflow.DefinitionError, match="ambiguous"):
        flow.edge(shared, "one")
    # by name it works
    flow.node("three", _one, after="one")


@pytest.mark.parametrize("retries", [-1, "3", 1.5, True])
def test_bad_retries_names_the_node(retries: Any) -> None:
    flow = aioflow.Flow("f")
    with pytest.raises(aioflow.DefinitionError) as exc:
        flow.node("flaky", _one, retries=retries)
    assert "flaky" in str(exc.value)
    assert "retries" in str(exc.value)
    assert not flow.vertices


@pytest.mark.parametrize("timeout", [0, -1, -0.5, "10", float("nan"), True])
def test_bad_timeout_names_the_node(timeout: Any) -> None:
    flow = aioflow.Flow("f")
    with pytest.raises(aioflow.DefinitionError) as exc:
        flow.node("slow", _one, timeout=timeout)
    assert "slow" in str(exc.value)
    assert "timeout" in str(exc.value)
    assert not flow.vertices


def test_good_retries_and_timeout() -> None:
    flow = aioflow.Flow("f")
    flow.node("a", _one, retries=3, timeout=1)
    flow.node("b", _one, retries=aioflow.RetryPolicy(retries=2, backoff=0.5), after="a")
    assert flow.vertices["a"].retry.retries == 3
    assert flow.vertices["a"].timeout == 1.0
    assert flow.vertices["b"].retry.backoff == 0.5


def test_app_with_two_flows_of_the_same_name() -> None:
    one = _chain("same")
    two = _chain("same")
    with pytest.raises(aioflow.DefinitionError, match=re.escape("'same'")):
        aioflow.App(flows=[one, two], redis_url="redis://127.0.0.1:1/0")


def test_app_takes_flows_only() -> None:
    with pytest.raises(aioflow.DefinitionError):
        aioflow.App(flows=[aioflow.Dag()], redis_url="redis://127.0.0.1:1/0")  # type: ignore[list-item]


def test_forward_with_data_false_is_refused() -> None:
    flow = aioflow.Flow("f")
    flow.node("a", _one)
    flow.node("b", _one)
    with pytest.raises(aioflow.DefinitionError, match="'a' -> 'b'"):
        flow.edge("a", "b", data=False, forward=str)


def test_duplicate_edge() -> None:
    flow = _chain()
    with pytest.raises(aioflow.DefinitionError, match="'a' -> 'b'"):
        flow.edge("a", "b")


def test_subdag_embedding_itself() -> None:
    dag = aioflow.Dag()
    dag.node("x", _one)
    with pytest.raises(aioflow.DefinitionError, match="'inner'"):
        dag.subdag("inner", dag)
