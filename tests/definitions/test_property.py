"""Random dags mixing nodes, subdags, branches and foreaches run on the engine
and agree, vertex by vertex, with a reference evaluator written here from the
documented semantics and walking the same :class:`aioflow.Dag` objects.

Semantics the reference applies:

- an entry vertex receives its scope's input; a vertex with one data edge the
  (forwarded) value along it; several data edges ``{parent: value}``; only
  ordering edges ``None``; a node with ``aggregate=fn`` gets ``fn({parent: value})``;
- a subdag's output is its dag's output: the single exit's value, or
  ``{exit: value}`` for several exits (the same holds for a whole flow);
- a branch's output is ``{condition: output of that branch's dag}`` for the
  chosen conditions, a foreach's ``{str(key): output of the dag on value}``;
  either passes through its ``aggregate`` when one is given;
- every value crossing a vertex is stored (JSON), so it comes back as JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import itertools
from collections.abc import Callable
from typing import Any, cast

import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import aioflow
from aioflow.core import codec
from aioflow.definitions.model import Dag
from aioflow.store.keys import RunId
from tests.engine_helpers import running

MAX_VERTICES = 30
_ids = itertools.count()


def digest(value: Any) -> str:
    raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha1(raw).hexdigest()[:10]


def normalize(value: Any) -> Any:
    """What a stored value reads back as."""
    return codec.decode(codec.encode(value))


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


# -- deterministic building blocks ----------------------------------------------------


def make_node(label: str, is_async: bool, with_ctx: bool) -> Callable[..., Any]:
    """Output ``label:digest(input)``; with ctx, the vertex address is appended."""
    if with_ctx and is_async:

        async def actx(data: Any, ctx: aioflow.Context) -> str:
            return f"{label}:{digest(data)}@{ctx.vertex}"

        return actx
    if with_ctx:

        def sctx(data: Any, ctx: aioflow.Context) -> str:
            return f"{label}:{digest(data)}@{ctx.vertex}"

        return sctx
    if is_async:

        async def afn(data: Any) -> str:
            return f"{label}:{digest(data)}"

        return afn

    def sfn(data: Any) -> str:
        return f"{label}:{digest(data)}"

    return sfn


def make_choose(conditions: list[str], is_async: bool) -> Callable[[Any], Any]:
    def pick(data: Any) -> list[str]:
        d = digest(data)
        return [c for i, c in enumerate(conditions) if int(d[i], 16) % 2 == 0]

    if is_async:

        async def achoose(data: Any) -> list[str]:
            await asyncio.sleep(0)
            return pick(data)

        return achoose
    return pick


def make_split(int_keys: bool, is_async: bool) -> Callable[[Any], Any]:
    def split(data: Any) -> dict[Any, Any]:
        d = digest(data)
        n = int(d[0], 16) % 4  # 0..3 items, so empty splits happen too
        return {(j if int_keys else f"k{j}"): f"{d[:4]}-{j}" for j in range(n)}

    if is_async:

        async def asplit(data: Any) -> dict[Any, Any]:
            await asyncio.sleep(0)
            return split(data)

        return asplit
    return split


def forward(value: Any) -> Any:
    return ["fwd", value]


def node_aggregate(values: dict[str, Any]) -> Any:
    return sorted(values.items())


def group_aggregate(results: dict[str, Any]) -> Any:
    return [len(results), sorted(results)]


# -- random dags ------------------------------------------------------------------------


class Builder:
    def __init__(self, draw: Callable[..., Any]) -> None:
        self.draw = draw
        self.pool: list[Dag] = []  # finished dags, embeddable again

    def build(self, dag: Dag, budget: int, depth: int) -> int:
        """Fill ``dag`` with at most ``budget`` vertices (nested ones count); return the count."""
        draw = self.draw
        used = 0
        names: list[str] = []
        n = draw(st.integers(1, min(budget, 6)))
        for i in range(n):
            left = budget - used
            if left <= 0:
                break
            name = f"v{i}"
            kinds = ["node", "node", "node"]
            if depth < 3 and left >= 2:
                kinds += ["subdag", "branch", "foreach"]
            kind = draw(st.sampled_from(kinds))
            parents: list[str] = (
                draw(st.lists(st.sampled_from(names), max_size=2, unique=True)) if names else []
            )
            edges = [(p, draw(st.integers(0, 5))) for p in parents]  # 0: no data, 1: forward
            data_parents = sum(1 for _, opt in edges if opt != 0)
            used += 1
            if kind == "node":
                label = f"n{next(_ids)}"
                fn = make_node(label, draw(st.booleans()), draw(st.booleans()))
                agg = node_aggregate if data_parents >= 2 and draw(st.booleans()) else None
                dag.node(name, fn, aggregate=agg)
            else:
                gagg = group_aggregate if draw(st.booleans()) else None
                if kind == "subdag":
                    if self.pool and draw(st.booleans()):
                        dag.subdag(name, draw(st.sampled_from(self.pool)))
                    else:
                        inner = Dag()
                        used += self.build(inner, left - 1, depth + 1)
                        self.pool.append(inner)
                        dag.subdag(name, inner)
                elif kind == "branch":
                    m = draw(st.integers(1, min(3, left - 1)))
                    conds = [f"c{j}" for j in range(m)]
                    choose = make_choose(conds, draw(st.booleans()))
                    branches = dag.branch(name, choose, conditions=conds, aggregate=gagg)
                    for j, c in enumerate(conds):
                        room = budget - used - (m - 1 - j)
                        used += self.build(branches[c], room, depth + 1)
                else:
                    split = make_split(draw(st.booleans()), draw(st.booleans()))
                    inner = dag.foreach(name, split, aggregate=gagg)
                    used += self.build(inner, left - 1, depth + 1)
            for p, opt in edges:
                dag.edge(p, name, data=opt != 0, forward=forward if opt == 1 else None)
            names.append(name)
        return used


# -- the reference evaluator ------------------------------------------------------------


def topological(dag: Dag) -> list[str]:
    indegree = {n: 0 for n in dag.vertices}
    for e in dag.edges:
        indegree[e.dst] += 1
    ready = [n for n in dag.vertices if indegree[n] == 0]
    order: list[str] = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for e in dag.edges:
            if e.src == n:
                indegree[e.dst] -= 1
                if indegree[e.dst] == 0:
                    ready.append(e.dst)
    assert len(order) == len(dag.vertices)
    return order


async def evaluate(dag: Dag, data: Any, scope: str, outputs: dict[str, Any]) -> Any:
    """The output of ``dag`` on ``data``; records every vertex output by address."""
    values: dict[str, Any] = {}
    for name in topological(dag):
        v = dag.vertices[name]
        incoming = [e for e in dag.edges if e.dst == name]
        carried = {
            e.src: e.forward(values[e.src]) if e.forward else values[e.src]
            for e in incoming
            if e.data
        }
        x: Any
        if not incoming:
            x = data
        elif v.kind == "node" and v.aggregate is not None:
            x = v.aggregate(carried)
        elif not carried:
            x = None
        elif len(carried) == 1:
            x = next(iter(carried.values()))
        else:
            x = carried
        address = scope + name
        y: Any
        if v.kind == "node":
            assert v.fn is not None
            params = len(inspect.signature(v.fn).parameters)
            y = await maybe_await(v.fn(x) if params == 1 else v.fn(x, _Ctx(address)))
        elif v.kind == "subdag":
            assert v.dag is not None
            y = await evaluate(v.dag, normalize(x), f"{address}[]/", outputs)
        elif v.kind == "branch":
            assert v.choose is not None
            chosen = list(dict.fromkeys(await maybe_await(v.choose(x)) or ()))
            y = {
                c: await evaluate(v.branches[c], normalize(x), f"{address}[{c}]/", outputs)
                for c in chosen
            }
        else:
            assert v.split is not None and v.dag is not None
            items = await maybe_await(v.split(x))
            y = {
                str(k): await evaluate(v.dag, normalize(val), f"{address}[{k}]/", outputs)
                for k, val in items.items()
            }
        if v.kind != "node" and v.aggregate is not None:
            y = v.aggregate(y)
        values[name] = outputs[address] = normalize(y)
    exits = [n for n in dag.vertices if not any(e.src == n for e in dag.edges)]
    return values[exits[0]] if len(exits) == 1 else {n: values[n] for n in exits}


class _Ctx:
    """What the reference shows a two-parameter node function: just the address."""

    def __init__(self, vertex: str) -> None:
        self.vertex = vertex


# -- the property -----------------------------------------------------------------------


async def engine_run(flow: aioflow.Flow, data: Any, url: str) -> tuple[Any, dict[str, Any]]:
    async with running([flow], url) as s:
        run_id = await s.client.submit(flow, data)
        result = await s.client.result(run_id, timeout=30)
        h = cast(dict[bytes, bytes], await s.redis.hgetall(RunId.parse(run_id).run))
    outputs = {
        k[2:].decode(): codec.decode(v)
        for k, v in h.items()
        if k.startswith(b"o:") and not k.endswith(b"$out")
    }
    return result, outputs


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    # one worker per example makes shrinking slow: report the example as found
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data(), run_input=st.integers(-1000, 1000))
def test_engine_agrees_with_reference(redis_url: str, data: st.DataObject, run_input: int) -> None:
    flow = aioflow.Flow(f"prop{next(_ids)}")
    Builder(data.draw).build(flow, MAX_VERTICES, 0)
    assert count_vertices(flow) <= MAX_VERTICES

    expected_outputs: dict[str, Any] = {}
    expected = asyncio.run(evaluate(flow, normalize(run_input), "", expected_outputs))
    result, outputs = asyncio.run(engine_run(flow, run_input, redis_url))
    assert outputs == expected_outputs
    assert result == expected


def count_vertices(dag: Dag, seen: set[int] | None = None) -> int:
    """Vertices defined in ``dag`` and the dags it holds (each distinct dag once)."""
    seen = set() if seen is None else seen
    seen.add(id(dag))
    total = len(dag.vertices)
    for v in dag.vertices.values():
        for inner in [v.dag, *v.branches.values()]:
            if inner is not None and id(inner) not in seen:
                total += count_vertices(inner, seen)
    return total
