"""Malformed subdag/branch/foreach definitions raise DefinitionError naming the
culprit: while building, or at App(...) time for whole-graph faults."""

from __future__ import annotations

from typing import Any

import pytest

import aioflow


def noop(data: Any) -> Any:
    return data


def test_branch_without_conditions() -> None:
    flow = aioflow.Flow("bad")
    with pytest.raises(aioflow.DefinitionError, match="'route'.*no conditions"):
        flow.branch("route", lambda d: [], conditions=[])
    assert "route" not in flow.vertices


def test_branch_with_a_duplicate_or_invalid_condition() -> None:
    flow = aioflow.Flow("bad")
    with pytest.raises(aioflow.DefinitionError, match="'route'.*twice"):
        flow.branch("route", lambda d: [], conditions=["a", "a"])
    with pytest.raises(aioflow.DefinitionError, match="'no/slash'"):
        flow.branch("route", lambda d: [], conditions=["no/slash"])


def test_branch_choose_must_be_callable() -> None:
    flow = aioflow.Flow("bad")
    with pytest.raises(aioflow.DefinitionError, match="'route'"):
        flow.branch("route", "not-a-function", conditions=["a"])  # type: ignore[arg-type]


def test_foreach_without_a_split_function() -> None:
    flow = aioflow.Flow("bad")
    with pytest.raises(aioflow.DefinitionError, match="'each'.*split"):
        flow.foreach("each", None)
    with pytest.raises(aioflow.DefinitionError, match="'each2'.*split"):
        flow.foreach("each2", {"a": 1})  # type: ignore[arg-type]
    assert not flow.vertices


def test_subdag_of_something_else() -> None:
    flow = aioflow.Flow("bad")
    with pytest.raises(aioflow.DefinitionError, match="'sub'.*expected a Dag"):
        flow.subdag("sub", noop)  # type: ignore[arg-type]


def test_subdag_embedding_itself() -> None:
    dag = aioflow.Dag()
    dag.node("a", noop)
    with pytest.raises(aioflow.DefinitionError, match="'self-ref'.*cycle"):
        dag.subdag("self-ref", dag)


def test_subdag_embedding_a_dag_that_contains_the_outer_one() -> None:
    outer = aioflow.Flow("outer")
    inner = aioflow.Dag()
    inner.node("x", noop)
    outer.subdag("inner", inner)
    with pytest.raises(aioflow.DefinitionError, match="'back'.*cycle"):
        inner.subdag("back", outer)
    assert "back" not in inner.vertices


def test_subdag_cycle_through_a_branch_and_a_foreach() -> None:
    outer = aioflow.Dag()
    branches = outer.branch("br", lambda d: ["a"], conditions=["a"])
    each = branches["a"].foreach("fe", lambda d: {})
    middle = aioflow.Dag()
    middle.node("m", noop)
    each.subdag("mid", middle)
    # middle -> outer -> br[a] -> fe -> middle
    with pytest.raises(aioflow.DefinitionError, match="'loop'.*cycle"):
        middle.subdag("loop", outer)
    # and straight from inside the branch back to the dag holding it
    with pytest.raises(aioflow.DefinitionError, match="'up'.*cycle"):
        branches["a"].subdag("up", outer)
    with pytest.raises(aioflow.DefinitionError, match="'up2'.*cycle"):
        each.subdag("up2", outer)


def test_an_empty_branch_dag_fails_at_app_time() -> None:
    flow = aioflow.Flow("empty-branch")
    flow.node("start", noop)
    branches = flow.branch("route", lambda d: [], conditions=["full", "hollow"], after="start")
    branches["full"].node("x", noop)
    with pytest.raises(aioflow.DefinitionError, match="'route'.*'hollow'"):
        aioflow.App(flows=[flow])


def test_an_empty_foreach_dag_fails_at_app_time() -> None:
    flow = aioflow.Flow("empty-each")
    flow.node("start", noop)
    flow.foreach("each", lambda d: {}, after="start")
    with pytest.raises(aioflow.DefinitionError, match="foreach 'each'.*empty"):
        aioflow.App(flows=[flow])


def test_an_empty_subdag_fails_at_app_time() -> None:
    flow = aioflow.Flow("empty-sub")
    flow.subdag("hollow", aioflow.Dag())
    with pytest.raises(aioflow.DefinitionError, match="subdag 'hollow'.*empty"):
        aioflow.App(flows=[flow])


def test_an_empty_dag_nested_deep_fails_at_app_time() -> None:
    flow = aioflow.Flow("empty-deep")
    inner = aioflow.Dag()
    each = inner.foreach("each", lambda d: {})
    each.branch("deep", lambda d: [], conditions=["void"])
    flow.subdag("sub", inner)
    with pytest.raises(aioflow.DefinitionError, match="'deep'.*'void'"):
        aioflow.App(flows=[flow])


def test_vertices_of_an_outer_dag_are_unknown_inside_a_group() -> None:
    flow = aioflow.Flow("scopes")
    flow.node("outer-node", noop)
    each = flow.foreach("each", lambda d: {}, after="outer-node")
    with pytest.raises(aioflow.DefinitionError, match="unknown vertex 'outer-node'"):
        each.node("inner-node", noop, after="outer-node")


def test_group_names_are_checked_like_vertex_names() -> None:
    flow = aioflow.Flow("names")
    with pytest.raises(aioflow.DefinitionError, match="'bad name'"):
        flow.subdag("bad name", aioflow.Dag())
    flow.foreach("each", lambda d: {})
    with pytest.raises(aioflow.DefinitionError, match="duplicate vertex name 'each'"):
        flow.branch("each", lambda d: [], conditions=["a"])
