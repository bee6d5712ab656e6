"""The graph model: :class:`Dag`, :class:`Flow`, the whole-graph checks and the
description of a dag as data.

A dag is built incrementally (decorators, ``node``/``edge`` calls, embedded
sub-graphs); each call validates what it adds (with :mod:`.checks`) and raises
:class:`~aioflow.DefinitionError` naming the culprit. Whole-graph checks that
need the finished graph (an empty graph, an empty branch) are
:func:`check_graph`, run when the dag is compiled into a
:class:`~aioflow.definitions.plan.Plan` or described.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypeVar, overload

from aioflow.core.errors import DefinitionError

from .checks import (
    FLOW_HOOK_SHAPES,
    KeyFn,
    branch_conditions,
    check_foreach,
    check_forward,
    check_hook,
    check_name,
    fn_name,
    node_limits,
    node_settings,
)
from .checks import is_async as is_async  # the worker's import
from .checks import takes_ctx as takes_ctx  # the worker's import
from .policy import Rate, RetryPolicy
from .ticks import Schedule
from .types import schemas
from .waits import After, Ref, Spec, WaitingVertices, WaitKind, describe_spec, event_names

__all__ = ["Dag", "Edge", "Flow", "Vertex"]

FLOW_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

NodeFn: TypeAlias = Callable[..., Any]
Kind = Literal["node", "subdag", "branch", "foreach", "wait", "sleep", "call"]
F = TypeVar("F", bound=Callable[..., Any])

ChooseFn: TypeAlias = Callable[[Any], "Iterable[str] | Awaitable[Iterable[str]]"]
SplitFn: TypeAlias = Callable[[Any], "Mapping[Any, Any] | Awaitable[Mapping[Any, Any]]"]


@dataclass(eq=False)
class Vertex:
    """One vertex of a dag (read-only for users; build with :class:`Dag` methods)."""

    name: str
    kind: Kind
    fn: NodeFn | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    aggregate: Callable[[Any], Any] | None = None
    on_failure: Callable[..., Any] | None = None
    dag: Dag | None = None
    branches: dict[str, Dag] = field(default_factory=dict)
    choose: ChooseFn | None = None
    split: SplitFn | None = None
    concurrency: int | None = None
    concurrency_key: KeyFn | None = None
    rate: Rate | None = None
    rate_key: KeyFn | None = None
    spec: Spec | None = None  # wait, sleep and call: what it waits on (.waits)


@dataclass(frozen=True, eq=False)
class Edge:
    """``src`` runs before ``dst``; ``data=False`` orders without passing the value,
    ``forward`` transforms the value on its way along this edge."""

    src: str
    dst: str
    data: bool = True
    forward: Callable[[Any], Any] | None = None


class Dag(WaitingVertices):
    """A reusable graph of vertices. Embed it in a flow with :meth:`subdag`."""

    def __init__(self) -> None:
        self.vertices: dict[str, Vertex] = {}
        self.edges: list[Edge] = []
        self._by_fn: dict[int, list[str]] = {}
        self._plan: Any = None

    def _label(self) -> str:
        return "dag"

    # -- references ---------------------------------------------------------------

    def _resolve(self, ref: Any, role: str) -> str:
        if isinstance(ref, str):
            if ref not in self.vertices:
                raise DefinitionError(
                    f"{self._label()}: unknown vertex {ref!r} in {role}; "
                    f"known: {sorted(self.vertices) or 'none'}"
                )
            return ref
        if callable(ref):
            names = self._by_fn.get(id(ref), [])
            fname = getattr(ref, "__name__", repr(ref))
            if not names:
                raise DefinitionError(
                    f"{self._label()}: function {fname!r} in {role} is not a vertex of this dag"
                )
            if len(names) > 1:
                raise DefinitionError(
                    f"{self._label()}: function {fname!r} in {role} is ambiguous: it is used by "
                    f"vertices {names}; refer to the vertex by name"
                )
            return names[0]
        raise DefinitionError(
            f"{self._label()}: {ref!r} in {role} is not a vertex name or function"
        )

    def _refs(self, after: Any, role: str) -> list[str]:
        if after is None:
            return []
        if isinstance(after, str) or callable(after):
            return [self._resolve(after, role)]
        return [self._resolve(a, role) for a in after]

    def _add(self, vertex: Vertex, after: Any) -> None:
        check_name(vertex.name)
        if vertex.name in self.vertices:
            raise DefinitionError(f"{self._label()}: duplicate vertex name {vertex.name!r}")
        parents = self._refs(after, f"after= of {vertex.name!r}")
        self.vertices[vertex.name] = vertex
        self._plan = None
        if vertex.fn is not None:
            self._by_fn.setdefault(id(vertex.fn), []).append(vertex.name)
        for p in parents:
            self.edge(p, vertex.name)

    def _add_waiting(
        self,
        name: str,
        kind: WaitKind,
        spec: Spec,
        after: After,
        retry: RetryPolicy | None = None,
        on_failure: Callable[..., Any] | None = None,
    ) -> str:
        if kind == "call" and not isinstance(getattr(spec, "flow", None), Flow):
            got = type(getattr(spec, "flow", None)).__name__
            raise DefinitionError(f"{self._label()}: call {name!r} needs a Flow, got {got}")
        v = Vertex(name, kind, retry=retry or RetryPolicy(), on_failure=on_failure, spec=spec)
        self._add(v, after)
        return name

    # -- building -----------------------------------------------------------------

    @overload
    def node(self, name: F, /) -> F: ...

    @overload
    def node(
        self,
        name: str | None = None,
        fn: None = None,
        /,
        *,
        after: After = None,
        retries: int | RetryPolicy | None = None,
        timeout: float | None = None,
        aggregate: Callable[[Any], Any] | None = None,
        on_failure: Callable[..., Any] | None = None,
        concurrency: int | None = None,
        concurrency_key: KeyFn | None = None,
        rate: str | None = None,
        rate_key: KeyFn | None = None,
    ) -> Callable[[F], F]: ...

    @overload
    def node(
        self,
        name: str,
        fn: F,
        /,
        *,
        after: After = None,
        retries: int | RetryPolicy | None = None,
        timeout: float | None = None,
        aggregate: Callable[[Any], Any] | None = None,
        on_failure: Callable[..., Any] | None = None,
        concurrency: int | None = None,
        concurrency_key: KeyFn | None = None,
        rate: str | None = None,
        rate_key: KeyFn | None = None,
    ) -> F: ...

    def node(
        self,
        name: Any = None,
        fn: Any = None,
        /,
        *,
        after: After = None,
        retries: int | RetryPolicy | None = None,
        timeout: float | None = None,
        aggregate: Callable[[Any], Any] | None = None,
        on_failure: Callable[..., Any] | None = None,
        concurrency: int | None = None,
        concurrency_key: KeyFn | None = None,
        rate: str | None = None,
        rate_key: KeyFn | None = None,
    ) -> Any:
        """Add a node vertex running ``fn(data)`` or ``fn(data, ctx)``.

        Use it as ``@dag.node``, ``@dag.node(after=..., retries=..., timeout=...)``,
        ``@dag.node("name", ...)`` or ``dag.node("name", fn, after=...)``. The vertex
        is named after the function unless a name is given. ``after`` names the
        parents (names or node functions). ``retries`` is a count or a
        :class:`RetryPolicy`; ``timeout`` is in seconds per attempt.
        ``aggregate(values)`` receives ``{parent: value}`` and returns the node's
        input. ``on_failure(error, data, ctx)`` may return a value that replaces
        the failed output (raise to let the vertex fail). Returns ``fn`` unchanged.

        Limits hold across all workers (see the README, "Limits"): at most
        ``concurrency`` executions at once, per value of ``concurrency_key(data)``
        when given; at most ``rate`` executions (``"100/s"``, ``"/m"``, ``"/h"``)
        per value of ``rate_key(data)`` when given. Key functions get the node's
        input, may be async and return a string.
        """
        limits = node_limits(name, concurrency, concurrency_key, rate, rate_key)
        if callable(name) and fn is None:
            named = fn_name(self._label(), name)
            return self._node(named, name, after, retries, timeout, aggregate, on_failure, limits)
        if fn is not None:
            if not callable(fn):
                raise DefinitionError(
                    f"{self._label()}: node {name!r} needs a callable, got {fn!r}"
                )
            return self._node(name, fn, after, retries, timeout, aggregate, on_failure, limits)

        def decorator(f: F) -> F:
            if not callable(f):
                raise DefinitionError(f"{self._label()}: @node needs a function, got {f!r}")
            return self._node(
                name if name is not None else fn_name(self._label(), f),
                f,
                after,
                retries,
                timeout,
                aggregate,
                on_failure,
                limits,
            )

        return decorator

    def _node(
        self,
        name: str,
        fn: F,
        after: After,
        retries: int | RetryPolicy | None,
        timeout: float | None,
        aggregate: Callable[[Any], Any] | None,
        on_failure: Callable[..., Any] | None,
        limits: dict[str, Any] | None = None,
    ) -> F:
        retry, seconds = node_settings(
            self._label(), name, fn, retries, timeout, aggregate, on_failure, limits
        )
        self._add(
            Vertex(
                name,
                "node",
                fn=fn,
                retry=retry,
                timeout=seconds,
                aggregate=aggregate,
                on_failure=on_failure,
                **(limits or {}),
            ),
            after,
        )
        return fn

    def edge(
        self,
        src: Ref,
        dst: Ref,
        *,
        data: bool = True,
        forward: Callable[[Any], Any] | None = None,
    ) -> None:
        """Make ``dst`` wait for ``src``. ``data=False`` passes no value along the
        edge; ``forward(value)`` transforms the value passed. Raises
        :class:`DefinitionError` for unknown vertices, duplicates and cycles."""
        a = self._resolve(src, "edge source")
        b = self._resolve(dst, "edge target")
        check_forward(self._label(), a, b, data, forward)
        if any(e.src == a and e.dst == b for e in self.edges):
            raise DefinitionError(f"{self._label()}: duplicate edge {a!r} -> {b!r}")
        path = _path(self.edges, b, a)
        if path is not None:
            cycle = " -> ".join([a, *path])
            raise DefinitionError(f"{self._label()}: edge {a!r} -> {b!r} makes a cycle: {cycle}")
        self.edges.append(Edge(a, b, data=data, forward=forward))
        self._plan = None

    def subdag(self, name: str, dag: Dag, *, after: After = None) -> str:
        """Embed ``dag`` as the vertex ``name``: its entries receive this vertex's
        input, and its output (one exit's value, or ``{exit: value}``) is this
        vertex's output. The same dag may be embedded any number of times."""
        if not isinstance(dag, Dag):
            raise DefinitionError(f"subdag {name!r}: expected a Dag, got {type(dag).__name__}")
        if dag is self or _contains(dag, self):
            raise DefinitionError(f"subdag {name!r} embeds a dag that contains this one: a cycle")
        self._add(Vertex(name, "subdag", dag=dag), after)
        return name

    def branch(
        self,
        name: str,
        choose: ChooseFn,
        *,
        conditions: Iterable[str],
        after: After = None,
        aggregate: Callable[[Any], Any] | None = None,
    ) -> dict[str, Dag]:
        """A conditional branch: ``choose(data)`` (sync or async) returns the
        conditions to run; each chosen branch's dag runs on this vertex's input,
        in parallel. The output is ``{condition: result}`` (``{}`` when none is
        chosen), or ``aggregate`` of it. Returns ``{condition: Dag}`` to fill in."""
        conds = branch_conditions(self._label(), name, choose, conditions, aggregate)
        branches = {c: Dag() for c in conds}
        self._add(
            Vertex(name, "branch", choose=choose, branches=branches, aggregate=aggregate), after
        )
        return branches

    def foreach(
        self,
        name: str,
        split: SplitFn | None,
        *,
        after: After = None,
        aggregate: Callable[[Any], Any] | None = None,
    ) -> Dag:
        """Run a dag once per item: ``split(data)`` (sync or async) returns
        ``{key: value}``; the returned dag runs on each value, in parallel across
        workers. The output is ``{key: result}`` (``{}`` for an empty split), or
        ``aggregate`` of it. Keys are turned into strings."""
        check_foreach(self._label(), name, split, aggregate)
        inner = Dag()
        self._add(Vertex(name, "foreach", split=split, dag=inner, aggregate=aggregate), after)
        return inner

    # -- introspection ------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The graph as JSON-able data (vertices, edges, entries, exits, nested dags)."""
        return describe(self)


def _path(edges: list[Edge], start: str, goal: str) -> list[str] | None:
    """A path start -> ... -> goal along ``edges``, if any."""
    children: dict[str, list[str]] = {}
    for e in edges:
        children.setdefault(e.src, []).append(e.dst)
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        v, path = stack.pop()
        if v == goal:
            return path
        if v in seen:
            continue
        seen.add(v)
        for c in children.get(v, []):
            stack.append((c, [*path, c]))
    return None


def _contains(dag: Dag, other: Dag, _seen: set[int] | None = None) -> bool:
    """Whether ``other`` is embedded in ``dag``, at any depth."""
    seen = _seen if _seen is not None else set()
    if id(dag) in seen:
        return False
    seen.add(id(dag))
    for v in dag.vertices.values():
        for d in [v.dag, *v.branches.values()]:
            if d is None:
                continue
            if d is other or _contains(d, other, seen):
                return True
    return False


# -- the whole graph --------------------------------------------------------------------


def check_graph(dag: Dag, _stack: tuple[int, ...] = ()) -> None:
    """Raise :class:`DefinitionError` for what only the finished graph shows: no
    vertices, no entry vertex, an empty subdag, foreach or branch, a dag embedding
    itself. Nested dags are checked depth first in vertex order; a dag compiled
    since it last changed has passed already."""
    if dag._plan is not None:
        return
    if id(dag) in _stack:
        raise DefinitionError(f"{dag._label()} embeds itself: a cycle")
    label = dag._label()
    if not dag.vertices:
        raise DefinitionError(f"{label} has no entry vertex: it has no vertices")
    targets = {e.dst for e in dag.edges}
    if all(n in targets for n in dag.vertices):
        raise DefinitionError(f"{label} has no entry vertex")
    stack = (*_stack, id(dag))
    for name, v in dag.vertices.items():
        if v.kind in ("subdag", "foreach"):
            assert v.dag is not None
            if not v.dag.vertices:
                raise DefinitionError(f"{label}: {v.kind} {name!r} has an empty dag")
            check_graph(v.dag, stack)
        elif v.kind == "branch":
            for cond, d in v.branches.items():
                if not d.vertices:
                    raise DefinitionError(
                        f"{label}: branch {name!r} condition {cond!r} has no vertices"
                    )
                check_graph(d, stack)


def describe(dag: Dag) -> dict[str, Any]:
    """See :meth:`Dag.describe`; a :class:`Flow` adds its name and partitions."""
    check_graph(dag)
    vertices = []
    for name, v in dag.vertices.items():
        item: dict[str, Any] = {
            "name": name,
            "kind": v.kind,
            "retries": v.retry.retries,
            "timeout": v.timeout,
            "aggregate": v.aggregate is not None,
            "on_failure": v.on_failure is not None,
        }
        if v.concurrency is not None:
            item["concurrency"] = v.concurrency
            item["concurrency_key"] = v.concurrency_key is not None
        if v.rate is not None:
            item["rate"] = {"count": v.rate.count, "period": v.rate.period}
            item["rate_key"] = v.rate_key is not None
        if v.spec is not None:
            item.update(describe_spec(v.spec))
        if v.kind in ("subdag", "foreach") and v.dag is not None:
            item["dag"] = describe(v.dag)
        if v.kind == "branch":
            item["conditions"] = list(v.branches)
            item["branches"] = {c: describe(d) for c, d in v.branches.items()}
        vertices.append(item)
    sources = {e.src for e in dag.edges}
    targets = {e.dst for e in dag.edges}
    out: dict[str, Any] = {
        "vertices": vertices,
        "edges": [
            {"from": e.src, "to": e.dst, "data": e.data, "forward": e.forward is not None}
            for e in dag.edges
        ],
        "entries": [n for n in dag.vertices if n not in targets],
        "exits": [n for n in dag.vertices if n not in sources],
    }
    if isinstance(dag, Flow):
        doc: dict[str, Any] = {"name": dag.name, "partitions": dag.partitions, "dag": out}
        if dag.on_event:  # absent otherwise: the versions of flows without it stay
            doc["on_event"] = list(dag.on_event)
        for what, schema in schemas(dag).items():  # likewise: only typed flows have them
            if schema is not None:
                doc[f"{what}_schema"] = schema
        return doc
    return out


class Flow(Dag):
    """A named dag that can be run. ``name`` matches ``^[a-z0-9][a-z0-9_-]{0,63}$``.

    ``partitions`` spreads the flow's runs over that many streams (and Redis
    Cluster slots). ``"auto"`` (the default) is 1 on a single Redis and, on a
    Redis Cluster, the fewest partitions that every master holds some of, none
    more than twice another's share; it is settled when a worker or gateway
    registers the flow.
    ``on_failure(error, ctx)`` runs once when a run fails; ``finally_(status,
    ctx)`` once when a run ends, whatever the outcome.
    ``on_event`` names events (one, or several) each of which starts one run of
    this flow per event id, its data the input (``flow.on_event`` is a tuple).
    """

    def __init__(
        self,
        name: str,
        *,
        partitions: int | Literal["auto"] = "auto",
        on_failure: Callable[..., Any] | None = None,
        finally_: Callable[..., Any] | None = None,
        on_event: str | Iterable[str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(name, str) or not FLOW_NAME_RE.fullmatch(name):
            raise DefinitionError(
                f"invalid flow name {name!r}: use 1-64 characters of lowercase letters, digits, "
                "'_' or '-', starting with a letter or digit"
            )
        if partitions != "auto" and (
            not isinstance(partitions, int)
            or isinstance(partitions, bool)
            or not 1 <= partitions <= 1024
        ):
            raise DefinitionError(f"flow {name!r}: partitions must be 'auto' or within 1..1024")
        for hook, what in ((on_failure, "on_failure"), (finally_, "finally_")):
            if hook is None:
                continue
            where = f"flow {name!r}: {what}"
            if not callable(hook):
                raise DefinitionError(f"{where} must be a function, got {hook!r}")
            check_hook(hook, where, FLOW_HOOK_SHAPES[what], nargs=2)
        self.name = name
        self.partitions = partitions
        self.on_failure = on_failure
        self.finally_ = finally_
        self.schedules: dict[str, Schedule] = {}
        self.on_event: tuple[str, ...] = event_names(on_event, name)

    def _label(self) -> str:
        return f"flow {self.name!r}"

    def schedule(
        self,
        name: str,
        *,
        every: float | None = None,
        cron: str | None = None,
        data: Any = None,
        timezone: str = "UTC",
        catch_up: int = 0,
    ) -> Schedule:
        """Start one run of this flow per tick, on ``data``, however many workers
        and gateways run: every ``every`` seconds (at least 1), or on the cron
        expression ``cron`` (5 fields, or 6 with seconds first) read in
        ``timezone``. Up to ``catch_up`` ticks missed while nothing ran still
        run. Raises :class:`DefinitionError` naming the schedule when it is
        malformed or its name is taken. See :class:`aioflow.Schedule`."""
        check_name(name, "schedule")
        if name in self.schedules:
            raise DefinitionError(f"{self._label()}: duplicate schedule name {name!r}")
        try:
            sched = Schedule(
                name, every=every, cron=cron, data=data, timezone=timezone, catch_up=catch_up
            )
        except DefinitionError as e:
            raise DefinitionError(f"{self._label()}: {e}") from None
        self.schedules[name] = sched
        return sched

    def __repr__(self) -> str:
        return f"Flow({self.name!r}, vertices={list(self.vertices)})"
