"""A dag compiled for execution, and vertex addresses.

A *scope* is one execution of a dag inside a run: ``""`` for the flow itself,
``"group[key]/"`` for one item of a subdag, branch or foreach (nested scopes
concatenate). A vertex *address* is its scope followed by its name, e.g.
``users[u1]/verify[]/face-detect``. Keys are percent-escaped so ``/``, ``[``
and ``]`` never appear inside one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aioflow.core.errors import DefinitionError

from .model import Dag, Flow, Vertex, check_graph
from .types import VertexTypes, vertex_types
from .waits import MISSING

OUT = "$out"  # synthetic join collecting several exits into {exit: value}
GROUPS = ("subdag", "branch", "foreach")


@dataclass(eq=False)
class Child:
    name: str
    indegree: int
    inline: bool  # the child's whole input is this parent's value (maybe forwarded)


@dataclass(eq=False)
class PNode:
    name: str
    kind: str  # node | subdag | branch | foreach | collect
    vertex: Vertex | None
    parents: tuple[str, ...]
    data_in: tuple[tuple[str, Callable[[Any], Any] | None], ...]
    children: tuple[Child, ...] = ()
    inner: Plan | None = None
    branches: dict[str, Plan] = field(default_factory=dict)
    types: VertexTypes | None = None  # a node's annotations' adapters (.types)

    @property
    def single_input(self) -> bool:
        """Input is one parent's value (or the scope input), not a dict."""
        # on a group, aggregate= shapes its output, not its input
        node_agg = self.kind == "node" and self.vertex is not None and self.vertex.aggregate
        return len(self.data_in) == 1 and not node_agg


@dataclass(eq=False)
class Plan:
    nodes: dict[str, PNode]
    entries: tuple[str, ...]
    exit: str


def compile_dag(dag: Dag) -> Plan:
    """Compile (and cache) ``dag``; raises :class:`~aioflow.DefinitionError` for
    whole-graph faults (see :func:`~aioflow.definitions.model.check_graph`)."""
    cached: Plan | None = dag._plan
    if cached is not None:
        return cached
    check_graph(dag)
    return _build(dag)


def _build(dag: Dag) -> Plan:
    """Compile ``dag``, which passed :func:`check_graph`, and its nested dags."""
    cached: Plan | None = dag._plan
    if cached is not None:
        return cached
    parents: dict[str, list[str]] = {n: [] for n in dag.vertices}
    children: dict[str, list[str]] = {n: [] for n in dag.vertices}
    data_in: dict[str, list[tuple[str, Callable[[Any], Any] | None]]] = {
        n: [] for n in dag.vertices
    }
    for e in dag.edges:
        parents[e.dst].append(e.src)
        children[e.src].append(e.dst)
        if e.data:
            data_in[e.dst].append((e.src, e.forward))
    entries = [n for n in dag.vertices if not parents[n]]
    exits = [n for n in dag.vertices if not children[n]]
    nodes: dict[str, PNode] = {}
    for name, v in dag.vertices.items():
        node = PNode(
            name,
            v.kind,
            v,
            tuple(parents[name]),
            tuple(data_in[name]) if parents[name] else ((name, None),),
        )
        node.types = vertex_types(dag._label(), name, v)
        try:
            if v.kind in ("subdag", "foreach"):
                assert v.dag is not None
                node.inner = _build(v.dag)
            elif v.kind == "branch":
                for cond, d in v.branches.items():
                    node.branches[cond] = _build(d)
        except DefinitionError as e:  # a nested dag's annotation: say whose dag it is
            raise DefinitionError(f"{dag._label()}: {v.kind} {name!r}: {e}") from None
        nodes[name] = node
    if len(exits) == 1:
        exit_name = exits[0]
    else:
        exit_name = OUT
        nodes[OUT] = PNode(OUT, "collect", None, tuple(exits), tuple((x, None) for x in exits))
        for x in exits:
            children[x].append(OUT)
    for name, node in nodes.items():
        kids = []
        for c in children.get(name, []):
            child = nodes[c]
            indeg = len(child.parents)
            inline = indeg == 1 and len(child.data_in) == 1 and child.single_input
            kids.append(Child(c, indeg, inline))
        node.children = tuple(kids)
    # an entry's "parent" is the scope input, recorded as data_in ((self, None),)
    plan = Plan(nodes, tuple(entries), exit_name)
    dag._plan = plan
    return plan


# -- addresses ------------------------------------------------------------------------

_ESC = {"%": "%25", "/": "%2F", "[": "%5B", "]": "%5D", "\n": "%0A"}


def escape_key(key: str) -> str:
    if not any(c in key for c in "%/[]\n"):
        return key
    return "".join(_ESC.get(c, c) for c in key)


def unescape_key(key: str) -> str:
    if "%" not in key:
        return key
    from urllib.parse import unquote

    return unquote(key)


def child_scope(scope: str, group: str, key: str) -> str:
    return f"{scope}{group}[{escape_key(key)}]/"


def split_address(address: str) -> tuple[str, str]:
    """``(scope, vertex name)`` of an address."""
    i = address.rfind("/")
    return address[: i + 1], address[i + 1 :]


def parent_group(scope: str) -> str:
    """The address of the group vertex that opened ``scope`` (non-empty scope)."""
    inner = scope[:-1]
    i = inner.rfind("[")
    return inner[:i]


def resolve(root: Plan, address: str) -> tuple[Plan, PNode, str]:
    """``(plan, node, scope)`` of an address; raises KeyError for a bad address."""
    plan = root
    scope, name = split_address(address)
    if scope:
        for seg in scope[:-1].split("/"):
            i = seg.index("[")
            group, key = seg[:i], unescape_key(seg[i + 1 : -1])
            node = plan.nodes[group]
            if node.kind == "branch":
                plan = node.branches[key]
            elif node.inner is not None:
                plan = node.inner
            else:
                raise KeyError(address)
    return plan, plan.nodes[name], scope


# -- description ----------------------------------------------------------------------


def _placeholder(data: Any) -> Any:  # stands in for user code in a rebuilt dag
    return data


def dag_from_description(doc: dict[str, Any]) -> Dag:
    """Rebuild a dag's shape from :meth:`Dag.describe` output (functions are placeholders).

    Lets processes that do not import the user's code (the gateway, the client)
    reason about a flow's structure, e.g. to rerun a failed run.
    """
    dag = Dag()
    for v in doc["vertices"]:
        kind, name = v["kind"], v["name"]
        if kind == "node":
            dag.node(name, _placeholder, aggregate=_placeholder if v.get("aggregate") else None)
        elif kind == "subdag":
            dag.subdag(name, dag_from_description(v["dag"]))
        elif kind == "foreach":
            inner = dag.foreach(name, _placeholder)
            _fill(inner, dag_from_description(v["dag"]))
        elif kind == "branch":
            branches = dag.branch(name, _placeholder, conditions=v["conditions"])
            for cond, sub in v["branches"].items():
                _fill(branches[cond], dag_from_description(sub))
        elif kind == "wait":
            w = v["wait"]
            key = _placeholder if w["key"] else None
            default = None if w["default"] else MISSING
            dag.wait(
                name,
                event=w["event"],
                key=key,
                timeout=w["timeout"],
                default=default,
                since=w["since"],
            )
        elif kind == "sleep":
            sl = v["sleep"]
            dag.sleep(name, seconds=sl["seconds"], until=_placeholder if sl["until"] else None)
        elif kind == "call":
            dag.call(name, Flow(v["call"]["flow"]))  # only its name: the child pins its own
    for e in doc["edges"]:
        dag.edge(
            e["from"], e["to"], data=e["data"], forward=_placeholder if e.get("forward") else None
        )
    return dag


def _fill(target: Dag, source: Dag) -> None:
    target.vertices = source.vertices
    target.edges = source.edges
    target._by_fn = source._by_fn
