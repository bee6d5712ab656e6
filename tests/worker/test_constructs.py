"""Subdag, branch, foreach, aggregate, edge options and the node context, each
alone and nested, on a real worker; results are checked value by value."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer

import aioflow
from aioflow.core import codec
from aioflow.gateway.routes import create_app
from aioflow.store.keys import RunId
from aioflow.versions import version_of
from tests.engine_helpers import Stack, running


async def outputs(s: Stack, run_id: str) -> dict[str, Any]:
    """Every stored vertex output of a run, by address."""
    h = cast(dict[bytes, bytes], await s.redis.hgetall(RunId.parse(run_id).run))
    return {k[2:].decode(): codec.decode(v) for k, v in h.items() if k.startswith(b"o:")}


def tag(label: str) -> Any:
    """A node function returning ``[label, input]``."""

    async def fn(data: Any) -> Any:
        return [label, data]

    return fn


# -- subdag -----------------------------------------------------------------------------


async def test_subdag_single_exit_gives_its_value(redis_url: str) -> None:
    inner = aioflow.Dag()
    inner.node("double", tag("double"))
    inner.node("wrap", tag("wrap"), after="double")
    flow = aioflow.Flow("sub-one")
    flow.node("start", tag("start"))
    flow.subdag("sub", inner, after="start")
    flow.node("end", tag("end"), after="sub")
    async with running([flow], redis_url) as s:
        result = await s.client.execute(flow, 1, timeout=10)
    assert result == ["end", ["wrap", ["double", ["start", 1]]]]


async def test_subdag_several_exits_give_a_dict(redis_url: str) -> None:
    inner = aioflow.Dag()
    inner.node("a", tag("a"))
    inner.node("b", tag("b"), after="a")
    inner.node("c", tag("c"), after="a")
    flow = aioflow.Flow("sub-many")
    flow.subdag("sub", inner)
    async with running([flow], redis_url) as s:
        run_id = await s.client.submit(flow, "x")
        result = await s.client.result(run_id, timeout=10)
        assert result == {"b": ["b", ["a", "x"]], "c": ["c", ["a", "x"]]}
        assert (await outputs(s, run_id))["sub"] == result


async def test_flow_with_several_exits_gives_a_dict(redis_url: str) -> None:
    flow = aioflow.Flow("exits")
    flow.node("a", tag("a"))
    flow.node("b", tag("b"))
    async with running([flow], redis_url) as s:
        assert await s.client.execute(flow, 0, timeout=10) == {"a": ["a", 0], "b": ["b", 0]}


# -- branch -----------------------------------------------------------------------------


def branch_flow(name: str, choose: Any, aggregate: Any = None) -> aioflow.Flow:
    flow = aioflow.Flow(name)
    flow.node("start", tag("start"))
    br = flow.branch(
        "route", choose, conditions=["left", "right"], after="start", aggregate=aggregate
    )
    br["left"].node("l1", tag("l1"))
    br["left"].node("l2", tag("l2"), after="l1")
    br["right"].node("r1", tag("r1"))
    br["right"].node("r2", tag("r2"))  # two exits: {"r1": ..., "r2": ...}
    flow.node("end", tag("end"), after="route")
    return flow


def sync_choose(data: Any) -> list[str]:
    return list(data[1]["pick"])


async def async_choose(data: Any) -> list[str]:
    await asyncio.sleep(0)
    return list(data[1]["pick"])


@pytest.mark.parametrize("choose", [sync_choose, async_choose], ids=["sync", "async"])
async def test_branch_output_maps_chosen_conditions(redis_url: str, choose: Any) -> None:
    flow = branch_flow("branch", choose)
    async with running([flow], redis_url) as s:
        both = {"pick": ["left", "right"]}
        run_id = await s.client.submit(flow, both)
        assert await s.client.result(run_id, timeout=10) == [
            "end",
            {
                "left": ["l2", ["l1", ["start", both]]],
                "right": {"r1": ["r1", ["start", both]], "r2": ["r2", ["start", both]]},
            },
        ]
        out = await outputs(s, run_id)
        assert out["route[left]/l1"] == ["l1", ["start", both]]

        left = {"pick": ["left"]}
        run_id = await s.client.submit(flow, left)
        assert await s.client.result(run_id, timeout=10) == [
            "end",
            {"left": ["l2", ["l1", ["start", left]]]},
        ]
        state = await s.client.state(run_id)
        assert not any(a.startswith("route[right]") for a in state.vertices)

        assert await s.client.execute(flow, {"pick": []}, timeout=10) == ["end", {}]


async def test_branch_choose_returning_none_gives_empty_dict(redis_url: str) -> None:
    def choose_nothing(data: Any) -> Any:
        return None

    flow = aioflow.Flow("branch-none")
    br = flow.branch("route", choose_nothing, conditions=["only"])
    br["only"].node("never", tag("never"))
    flow.node("end", tag("end"), after="route")
    async with running([flow], redis_url) as s:
        assert await s.client.execute(flow, 1, timeout=10) == ["end", {}]


async def test_branch_aggregate(redis_url: str) -> None:
    flow = aioflow.Flow("branch-agg")
    # the branch is an entry vertex: its input is the run's input
    br = flow.branch(
        "route",
        lambda d: d["pick"],
        conditions=["left", "right"],
        aggregate=lambda out: sorted(out.items()),
    )
    br["left"].node("l", tag("l"))
    br["right"].node("r", tag("r"))
    flow.node("end", tag("end"), after="route")
    async with running([flow], redis_url) as s:
        data = {"pick": ["right", "left"]}
        result = await s.client.execute(flow, data, timeout=10)
        assert result == ["end", [["left", ["l", data]], ["right", ["r", data]]]]
        assert await s.client.execute(flow, {"pick": []}, timeout=10) == ["end", []]


async def test_branch_undeclared_condition_fails_the_run(redis_url: str) -> None:
    flow = aioflow.Flow("branch-bad")
    flow.node("start", tag("start"))
    br = flow.branch("route", lambda data: ["yes", "maybe"], conditions=["yes"], after="start")
    br["yes"].node("y", tag("y"))
    flow.node("end", tag("end"), after="route")
    async with running([flow], redis_url) as s:
        with pytest.raises(aioflow.RunFailed) as info:
            await s.client.execute(flow, 1, timeout=10)
        assert info.value.vertex == "route"
        assert "'maybe'" in info.value.message
        assert "yes" in info.value.message  # the declared ones are listed
        state = await s.client.state(info.value.run_id)
        assert state.status is aioflow.Status.FAILED
        assert "end" not in state.vertices


# -- foreach ----------------------------------------------------------------------------


def sync_split(data: Any) -> dict[Any, Any]:
    return {i: v for i, v in enumerate(data)}


async def async_split(data: Any) -> dict[Any, Any]:
    await asyncio.sleep(0)
    return {i: v for i, v in enumerate(data)}


@pytest.mark.parametrize("split", [sync_split, async_split], ids=["sync", "async"])
async def test_foreach_maps_stringified_keys_to_results(redis_url: str, split: Any) -> None:
    flow = aioflow.Flow("each")
    each = flow.foreach("each", split)
    each.node("square", lambda v: v * v)  # a plain def/lambda runs in a thread
    each.node("label", tag("label"), after="square")
    flow.node("end", tag("end"), after="each")
    async with running([flow], redis_url) as s:
        run_id = await s.client.submit(flow, [3, 4, 5])
        assert await s.client.result(run_id, timeout=10) == [
            "end",
            {"0": ["label", 9], "1": ["label", 16], "2": ["label", 25]},
        ]
        out = await outputs(s, run_id)
        assert out["each[1]/square"] == 16
        assert await s.client.execute(flow, [], timeout=10) == ["end", {}]


async def test_foreach_keys_with_special_characters(redis_url: str) -> None:
    flow = aioflow.Flow("each-keys")
    each = flow.foreach("each", lambda data: {k: k for k in data})
    each.node("echo", tag("echo"))
    keys = ["a/b", "[x]", "100%", "", "é"]
    async with running([flow], redis_url) as s:
        result = await s.client.execute(flow, keys, timeout=10)
    assert result == {k: ["echo", k] for k in keys}


async def test_foreach_aggregate(redis_url: str) -> None:
    flow = aioflow.Flow("each-agg")
    each = flow.foreach("each", sync_split, aggregate=lambda out: sum(out.values()))
    each.node("double", lambda v: 2 * v)
    async with running([flow], redis_url) as s:
        assert await s.client.execute(flow, [1, 2, 3], timeout=10) == 12
        assert await s.client.execute(flow, [], timeout=10) == 0


@pytest.mark.parametrize("kind", ["branch", "foreach"])
async def test_group_with_aggregate_and_one_parent_gets_the_parent_value(
    redis_url: str, kind: str
) -> None:
    """``aggregate=`` of a branch/foreach shapes its output, not its input: with one
    parent, choose/split still receive that parent's value."""
    seen: list[Any] = []

    def choose(data: Any) -> list[str]:
        seen.append(data)
        return ["go"]

    def split(data: Any) -> dict[str, Any]:
        seen.append(data)
        return {str(i): v for i, v in enumerate(data)} if isinstance(data, list) else {}

    def agg(out: dict[str, Any]) -> Any:
        return sorted(out.items())

    flow = aioflow.Flow(f"{kind}-agg-input")
    flow.node("start", lambda data: [1, 2])
    if kind == "branch":
        inner = flow.branch("group", choose, conditions=["go"], after="start", aggregate=agg)["go"]
        inner.node("len", len)
        expected: Any = [["go", 2]]
    else:
        inner = flow.foreach("group", split, after="start", aggregate=agg)
        inner.node("inc", lambda v: v + 1)
        expected = [["0", 2], ["1", 3]]
    async with running([flow], redis_url) as s:
        result = await s.client.execute(flow, None, timeout=10)
    assert seen == [[1, 2]]
    assert result == expected


# -- several parents, aggregate, edge options ------------------------------------------


async def test_several_parents_aggregate_and_edge_options(redis_url: str) -> None:
    flow = aioflow.Flow("joins")
    flow.node("a", tag("a"))
    flow.node("b", tag("b"))
    flow.node("c", tag("c"))
    flow.node("plain", tag("plain"), after=["a", "b"])
    flow.node("agg", tag("agg"), after=["a", "b"], aggregate=lambda d: [d["b"], d["a"]])
    flow.node("ordered", tag("ordered"), after="a")
    flow.edge("c", "ordered", data=False)  # waits for c, receives only a's value
    flow.node("nodata", tag("nodata"))
    flow.edge("a", "nodata", data=False)
    flow.node("fwd", tag("fwd"))
    flow.edge("a", "fwd", forward=lambda v: {"forwarded": v})
    flow.edge("b", "fwd")
    flow.node("all", lambda d: sorted(d), after=["plain", "agg", "ordered", "nodata", "fwd"])
    async with running([flow], redis_url) as s:
        run_id = await s.client.submit(flow, 7)
        assert await s.client.result(run_id, timeout=10) == [
            "agg",
            "fwd",
            "nodata",
            "ordered",
            "plain",
        ]
        out = await outputs(s, run_id)
    a, b = ["a", 7], ["b", 7]
    assert out["plain"] == ["plain", {"a": a, "b": b}]
    assert out["agg"] == ["agg", [b, a]]
    assert out["ordered"] == ["ordered", a]
    assert out["nodata"] == ["nodata", None]
    assert out["fwd"] == ["fwd", {"a": {"forwarded": a}, "b": b}]


async def test_node_after_groups_gets_group_outputs_by_name(any_redis_url: str) -> None:
    flow = aioflow.Flow("after-groups")
    inner = aioflow.Dag()
    inner.node("x", tag("x"))
    flow.subdag("sub", inner)
    br = flow.branch("br", lambda d: ["k"], conditions=["k"])
    br["k"].node("y", tag("y"))
    each = flow.foreach("fe", lambda d: {"only": d})
    each.node("z", tag("z"))
    flow.node("join", tag("join"), after=["sub", "br", "fe"])
    async with running([flow], any_redis_url) as s:
        assert await s.client.execute(flow, 1, timeout=10) == [
            "join",
            {"sub": ["x", 1], "br": {"k": ["y", 1]}, "fe": {"only": ["z", 1]}},
        ]


# -- nesting and reuse ------------------------------------------------------------------


def nested_flow(name: str) -> aioflow.Flow:
    """subdag "outer" > branch "br" (pass: foreach "fe" > node "sq"; fail: node "no")."""
    inner = aioflow.Dag()
    inner.node("prep", lambda d: d)
    br = inner.branch(
        "br", lambda d: ["pass"] if d else ["fail"], conditions=["pass", "fail"], after="prep"
    )
    fe = br["pass"].foreach("fe", lambda items: {v: v for v in items})
    fe.node("sq", lambda v: v * v)
    fe.node("tagged", tag("t"), after="sq")
    br["pass"].node("count", lambda out: len(out), after="fe")
    br["fail"].node("no", lambda d: "empty")
    inner.node("res", tag("res"), after="br")
    flow = aioflow.Flow(name)
    flow.node("start", lambda d: d["items"])
    flow.subdag("outer", inner, after="start")
    flow.node("end", tag("end"), after="outer")
    return flow


async def test_foreach_in_branch_in_subdag(any_redis_url: str) -> None:
    flow = nested_flow("nested")
    async with running([flow], any_redis_url) as s:
        run_id = await s.client.submit(flow, {"items": [2, 3]})
        assert await s.client.result(run_id, timeout=10) == [
            "end",
            ["res", {"pass": 2}],
        ]
        out = await outputs(s, run_id)
        assert out["outer[]/br[pass]/fe"] == {"2": ["t", 4], "3": ["t", 9]}
        assert out["outer[]/br[pass]/fe[3]/sq"] == 9
        assert out["outer[]/br[pass]/fe[2]/tagged"] == ["t", 4]
        assert out["outer[]/br"] == {"pass": 2}
        assert out["outer"] == ["res", {"pass": 2}]
        state = await s.client.state(run_id)
        assert state.vertices["outer[]/br[pass]/fe[2]/sq"].status == "completed"
        assert not any("[fail]" in a for a in state.vertices)

        assert await s.client.execute(flow, {"items": []}, timeout=10) == [
            "end",
            ["res", {"fail": "empty"}],
        ]


async def test_same_dag_embedded_twice_and_in_two_flows(redis_url: str) -> None:
    shared = aioflow.Dag()
    shared.node("inc", lambda v: v + 1)
    shared.node("neg", lambda v: -v, after="inc")

    one = aioflow.Flow("reuse-one")
    one.node("start", lambda v: v)
    one.subdag("first", shared, after="start")
    one.subdag("second", shared, after="first")
    each = one.foreach("each", lambda v: {"a": v, "b": 10 * v}, after="start")
    each.subdag("third", shared)
    one.node("end", lambda d: d, after=["second", "each"])

    two = aioflow.Flow("reuse-two")
    two.subdag("only", shared)

    async with running([one, two], redis_url) as s:
        run_id = await s.client.submit(one, 1)
        # first: -(1+1) = -2; second: -(-2+1) = 1; each: a -> -2, b -> -11
        assert await s.client.result(run_id, timeout=10) == {
            "second": 1,
            "each": {"a": -2, "b": -11},
        }
        out = await outputs(s, run_id)
        assert out["first"] == -2 and out["first[]/inc"] == 2
        assert out["second[]/inc"] == -1
        assert out["each[b]/third[]/inc"] == 11
        assert await s.client.execute(two, 5, timeout=10) == -6


# -- context ----------------------------------------------------------------------------


async def test_run_store_is_shared_by_the_vertices_of_one_run(any_redis_url: str) -> None:
    flow = aioflow.Flow("store")

    async def first(data: Any, ctx: aioflow.Context) -> None:
        assert await ctx.store.get("seen", "absent") == "absent"
        await ctx.store.set("seen", [f"first:{data}"])
        await ctx.store.set("scratch", b"\x00raw")

    async def item(value: Any, ctx: aioflow.Context) -> None:
        await ctx.store.set(f"item-{value}", {"by": ctx.vertex})

    async def last(_: Any, ctx: aioflow.Context) -> dict[str, Any]:
        seen = await ctx.store.get("seen")
        scratch = await ctx.store.get("scratch")
        await ctx.store.delete("scratch")
        items = {k: await ctx.store.get(f"item-{k}") for k in ("x", "y")}
        return {
            "seen": seen,
            "scratch": scratch.hex(),
            "gone": await ctx.store.get("scratch"),
            "items": items,
        }

    flow.node("first", first)
    each = flow.foreach("each", lambda _: {"x": "x", "y": "y"}, after="first")
    each.node("item", item)
    flow.node("last", last, after="each")
    async with running([flow], any_redis_url) as s:
        r1, r2 = await asyncio.gather(
            s.client.execute(flow, 1, timeout=10), s.client.execute(flow, 2, timeout=10)
        )
    for r, n in ((r1, 1), (r2, 2)):
        assert r == {
            "seen": [f"first:{n}"],
            "scratch": "00726177",
            "gone": None,
            "items": {"x": {"by": "each[x]/item"}, "y": {"by": "each[y]/item"}},
        }


async def test_context_carries_run_flow_vertex_attempt_options(redis_url: str) -> None:
    flow = aioflow.Flow("ctx")

    def describe(data: Any, ctx: aioflow.Context) -> dict[str, Any]:  # sync, in a thread
        return {
            "run_id": ctx.run_id,
            "flow": ctx.flow,
            "vertex": ctx.vertex,
            "attempt": ctx.attempt,
            "options": ctx.options,
        }

    flow.node("top", describe)
    each = flow.foreach("each", lambda _: {"k": 1}, after="top")
    each.node("deep", describe)
    options = {"tenant": ["acme"], "tag": ["a", "b"]}
    async with running([flow], redis_url) as s:
        run_id = await s.client.submit(flow, None, options=options)
        result = await s.client.result(run_id, timeout=10)
        out = await outputs(s, run_id)
        plain_id = await s.client.submit(flow, None, run_id="no-options")
        assert plain_id.endswith(".no-options")
        assert await s.client.result(plain_id, timeout=10) == {
            "k": {
                "run_id": plain_id,
                "flow": "ctx",
                "vertex": "each[k]/deep",
                "attempt": 1,
                "options": {},
            }
        }
    assert result == {
        "k": {
            "run_id": run_id,
            "flow": "ctx",
            "vertex": "each[k]/deep",
            "attempt": 1,
            "options": options,
        }
    }
    assert out["top"] == {
        "run_id": run_id,
        "flow": "ctx",
        "vertex": "top",
        "attempt": 1,
        "options": options,
    }


# -- definition -------------------------------------------------------------------------


def vertex(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [v for v in doc["vertices"] if v["name"] == name]
    assert len(found) == 1, name
    return found[0]


def check_nested_description(doc: dict[str, Any], partitions: int | str) -> None:
    assert doc["name"] == "nested-def" and doc["partitions"] == partitions
    top = doc["dag"]
    assert [v["name"] for v in top["vertices"]] == ["start", "outer", "end"]
    assert top["entries"] == ["start"] and top["exits"] == ["end"]
    assert {"from": "start", "to": "outer", "data": True, "forward": False} in top["edges"]
    outer = vertex(top, "outer")
    assert outer["kind"] == "subdag"
    sub = outer["dag"]
    assert sub["entries"] == ["prep"] and sub["exits"] == ["res"]
    br = vertex(sub, "br")
    assert br["kind"] == "branch"
    assert br["conditions"] == ["pass", "fail"]
    assert set(br["branches"]) == {"pass", "fail"}
    passed = br["branches"]["pass"]
    assert passed["entries"] == ["fe"] and passed["exits"] == ["count"]
    fe = vertex(passed, "fe")
    assert fe["kind"] == "foreach"
    assert [v["name"] for v in fe["dag"]["vertices"]] == ["sq", "tagged"]
    assert vertex(fe["dag"], "sq")["kind"] == "node"
    assert fe["dag"]["edges"] == [{"from": "sq", "to": "tagged", "data": True, "forward": False}]
    assert [v["name"] for v in br["branches"]["fail"]["vertices"]] == ["no"]


async def test_definition_json_has_the_nested_structure(redis_url: str) -> None:
    flow = nested_flow("nested-def")
    check_nested_description(flow.describe(), "auto")
    async with running([flow], redis_url) as s:
        gateway = create_app(s.redis, flows=[flow])
        async with TestClient(TestServer(gateway)) as http:
            resp = await http.get("/flow/nested-def")
            assert resp.status == 200
            doc = await resp.json()
    check_nested_description(doc, 1)  # "auto" is one partition on a single Redis
    assert doc.pop("version") == version_of(flow)
    assert [v["version"] for v in doc.pop("versions")] == [version_of(flow)]
    assert doc == {**codec.loads(codec.dumps(flow.describe())), "partitions": 1, "schedules": []}
