"""Malformed subdag/branch/foreach definitions raise DefinitionError naming the
culprit: while building, or at App(...) time for whole-graph faults."""

from __future__ import annotations

import functools
import re
from typing import Any, cast

import pytest

import aioflow
from tests.engine_helpers import running


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


# -- function shapes, checked when the flow is built ------------------------------------


async def takes_nothing() -> int:
    return 1


async def takes_three(data: Any, ctx: aioflow.Context, extra: Any) -> Any:
    return data


async def needs_a_keyword(data: Any, *, mode: str) -> Any:
    return data


async def yields(data: Any) -> Any:
    yield data


def yields_sync(data: Any) -> Any:
    yield data


class Yielding:
    def __call__(self, data: Any) -> Any:
        yield data


@pytest.mark.parametrize(
    ("fn", "why"),
    [
        (takes_nothing, r"takes_nothing\(\) takes no positional parameters"),
        (takes_three, r"takes_three\(data, ctx, extra\) takes 3 required positional"),
        (lambda a, b, c, d: a, r"takes 4 required positional"),
        (needs_a_keyword, r"keyword-only parameters without a default \(mode\)"),
        (yields, "yields is an async generator function"),
        (yields_sync, "yields_sync is a generator function"),
        (Yielding(), "Yielding object is a generator function"),
    ],
)
def test_a_node_function_of_the_wrong_shape_is_refused(fn: Any, why: str) -> None:
    flow = aioflow.Flow("shapes")
    with pytest.raises(aioflow.DefinitionError) as info:
        flow.node("bad", fn)
    message = str(info.value)
    assert message.startswith("flow 'shapes': node 'bad': ")
    assert re.search(why, message), message
    assert "1 or 2 positional parameters: data, and optionally ctx" in message
    assert "bad" not in flow.vertices


def test_each_way_of_adding_a_node_checks_it() -> None:
    flow = aioflow.Flow("shapes")
    with pytest.raises(aioflow.DefinitionError, match="node 'takes_nothing'"):
        flow.node(takes_nothing)
    with pytest.raises(aioflow.DefinitionError, match="node 'named'"):
        flow.node("named")(takes_three)
    with pytest.raises(aioflow.DefinitionError, match="node 'yields'.*generator"):
        flow.node(retries=2)(yields)
    dag = aioflow.Dag()
    with pytest.raises(aioflow.DefinitionError, match=r"^dag: node 'inner': .*takes 3 required"):
        dag.node("inner", takes_three)
    assert not flow.vertices and not dag.vertices


class Node:
    def __init__(self, k: int) -> None:
        self.k = k

    async def __call__(self, data: int, ctx: aioflow.Context) -> list[Any]:
        return [data * self.k, ctx.vertex]


async def scaled(k: int, data: int) -> int:
    return data * k


async def keyword_default(data: int, *, k: int = 3) -> int:
    return data * k


async def star(*values: Any) -> list[Any]:
    return list(values)


def plain(data: int, ctx: aioflow.Context | None = None) -> list[Any]:
    return [data, ctx.vertex if ctx is not None else None]


async def test_every_allowed_shape_builds_and_runs(redis_url: str) -> None:
    """Callable objects, partials, keyword-only defaults, *args, plain def: accepted
    at build time and called the way the check promised (ctx only when a second
    positional parameter is named)."""
    flow = aioflow.Flow("allowed")
    flow.node("obj", Node(2))
    flow.node("part", functools.partial(scaled, 5))
    flow.node("kw", keyword_default)
    flow.node("star", star)
    flow.node("plain", plain)
    flow.node("builtin", abs)  # no readable signature is no reason to refuse
    async with running([flow], redis_url) as s:
        out = await s.client.execute("allowed", -2, timeout=10)
    assert out == {
        "obj": [-4, "obj"],
        "part": -10,
        "kw": -6,
        "star": [-2],
        "plain": [-2, "plain"],
        "builtin": 2,
    }


def test_hooks_of_the_wrong_shape_are_refused() -> None:
    flow = aioflow.Flow("hooks")

    async def two_params(a: Any, b: Any) -> Any:
        return a

    two: Any = two_params  # what a type checker would catch: aioflow catches it too
    nothing: Any = takes_nothing

    cases: list[tuple[Any, str]] = [
        (lambda: flow.node("n1", star, aggregate=two), r"node 'n1': aggregate: two_params\(a, b\)"),
        (
            lambda: flow.node("n2", star, on_failure=two),
            r"node 'n2': on_failure: two_params\(a, b\) takes 2 positional parameters: "
            r"on_failure\(error, data, ctx\)",
        ),
        (
            lambda: flow.node("n3", star, concurrency=1, concurrency_key=yields_sync),
            "node 'n3': concurrency_key: yields_sync is a generator function",
        ),
        (
            lambda: flow.node("n4", star, rate="1/s", rate_key=two),
            r"node 'n4': rate_key: two_params\(a, b\)",
        ),
        (lambda: flow.foreach("fe", yields_sync), "foreach 'fe': split: yields_sync is a gen"),
        (lambda: flow.foreach("fe2", two), r"foreach 'fe2': split: two_params\(a, b\)"),
        (
            lambda: flow.branch("br", yields, conditions=["a"]),
            "branch 'br': choose: yields is an async generator",
        ),
        (
            lambda: flow.branch("br2", star, conditions=["a"], aggregate=nothing),
            r"branch 'br2': aggregate: takes_nothing\(\)",
        ),
        (
            lambda: aioflow.Flow("f", on_failure=lambda error: None),
            r"flow 'f': on_failure: .* takes 1 positional parameter: on_failure\(error, ctx\)",
        ),
        (
            lambda: aioflow.Flow("f", finally_=takes_three),
            r"flow 'f': finally_: takes_three\(data, ctx, extra\) takes 3 required",
        ),
        (
            lambda: aioflow.Flow("f", finally_="nope"),  # type: ignore[arg-type]
            "flow 'f': finally_ must be a function",
        ),
    ]
    for build, why in cases:
        with pytest.raises(aioflow.DefinitionError, match=why):
            build()
    assert not flow.vertices


def test_edge_forward_must_be_a_plain_function_of_one_value() -> None:
    flow = aioflow.Flow("fwd")
    flow.node("a", star)
    flow.node("b", star)

    async def forward(value: Any) -> Any:
        return value

    with pytest.raises(aioflow.DefinitionError, match="edge 'a' -> 'b': forward: forward is async"):
        flow.edge("a", "b", forward=forward)
    with pytest.raises(aioflow.DefinitionError, match=r"edge 'a' -> 'b': forward: .*takes 2"):
        flow.edge("a", "b", forward=cast(Any, lambda x, y: x))
    assert not flow.edges
    flow.edge("a", "b", forward=functools.partial(max, 0))


def test_hooks_of_the_right_shape_are_accepted() -> None:
    async def recover(error: Exception, data: Any, ctx: aioflow.Context) -> Any:
        return None

    async def hook(x: Any, ctx: aioflow.Context) -> None:
        return None

    def conditions(data: Any) -> Any:
        yield "a"  # a generator of conditions is read like a list

    flow = aioflow.Flow("fine", on_failure=hook, finally_=functools.partial(hook))
    flow.node("n", star, aggregate=len, on_failure=recover, concurrency=1, concurrency_key=str)
    flow.branch("br", conditions, conditions=["a"])["a"].node("x", star)
    flow.foreach("fe", dict)
    assert set(flow.vertices) == {"n", "br", "fe"}
