"""The graph model: :class:`Dag`, :class:`Flow` and their validation.

A dag is built incrementally (decorators, ``node``/``edge`` calls, embedded
sub-graphs); each call validates what it adds and raises
:class:`~aioflow.DefinitionError` naming the culprit. Whole-graph checks that
need the finished graph (an empty graph, an empty branch) run when the dag is
compiled into a :class:`~aioflow.plan.Plan`.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypeVar, overload

from aioflow.core.errors import DefinitionError

from .policy import Rate, RetryPolicy
from .ticks import Schedule

__all__ = ["Dag", "Edge", "Flow", "Vertex"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
FLOW_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

NodeFn: TypeAlias = Callable[..., Any]
Ref: TypeAlias = "str | Callable[..., Any]"
After: TypeAlias = "Ref | Iterable[Ref] | None"
Kind = Literal["node", "subdag", "branch", "foreach"]
F = TypeVar("F", bound=Callable[..., Any])

ChooseFn: TypeAlias = Callable[[Any], "Iterable[str] | Awaitable[Iterable[str]]"]
SplitFn: TypeAlias = Callable[[Any], "Mapping[Any, Any] | Awaitable[Mapping[Any, Any]]"]
KeyFn: TypeAlias = Callable[[Any], "str | Awaitable[str]"]


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


@dataclass(frozen=True, eq=False)
class Edge:
    """``src`` runs before ``dst``; ``data=False`` orders without passing the value,
    ``forward`` transforms the value on its way along this edge."""

    src: str
    dst: str
    data: bool = True
    forward: Callable[[Any], Any] | None = None


def check_name(name: object, what: str = "vertex") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise DefinitionError(
            f"invalid {what} name {name!r}: use 1-64 characters of letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


# -- function shapes ---------------------------------------------------------------------

NODE_SHAPE = (
    "a node function takes 1 or 2 positional parameters: data, and optionally ctx "
    "(*args is accepted; further parameters need defaults)"
)


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables: cannot tell, accept
        return None


def _code_target(fn: Any) -> Any:
    """What to ask whether ``fn`` is a coroutine/generator function: a callable
    object answers through its ``__call__``; functions, methods and partials
    through themselves (inspect unwraps partials and methods)."""
    if inspect.isroutine(fn) or isinstance(fn, functools.partial | type):
        return fn
    return getattr(type(fn), "__call__", fn)  # noqa: B004 - the method, not callable()


def is_async(fn: Callable[..., Any]) -> bool:
    """``fn(...)`` returns a coroutine: an ``async def`` function, or a partial or
    callable object whose call is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(_code_target(fn))


ASYNC_GEN = "an async generator function"


def _generator_kind(fn: Callable[..., Any]) -> str | None:
    target = _code_target(fn)
    if inspect.isasyncgenfunction(fn) or inspect.isasyncgenfunction(target):
        return ASYNC_GEN
    if inspect.isgeneratorfunction(fn) or inspect.isgeneratorfunction(target):
        return "a generator function"
    return None


@dataclass(frozen=True)
class _Params:
    required: int  # positional parameters without a default
    named: int  # positional parameters, *args excluded
    star: bool  # takes *args
    kw_required: tuple[str, ...]  # keyword-only parameters without a default

    @classmethod
    def of(cls, sig: inspect.Signature) -> _Params:
        required = named = 0
        star = False
        kw_required: list[str] = []
        for p in sig.parameters.values():
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                named += 1
                required += p.default is p.empty
            elif p.kind is p.VAR_POSITIONAL:
                star = True
            elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
                kw_required.append(p.name)
        return cls(required, named, star, tuple(kw_required))

    def accepts(self, n: int) -> bool:
        """Whether a call with ``n`` positional arguments binds."""
        return self.required <= n and (self.named >= n or self.star) and not self.kw_required

    def why_not(self, nargs: tuple[int, ...]) -> str:
        if self.kw_required:
            return f"has keyword-only parameters without a default ({', '.join(self.kw_required)})"
        if self.required > max(nargs):
            return f"takes {self.required} required positional parameters"
        return f"takes {self.named or 'no'} positional parameter{'' if self.named == 1 else 's'}"


def takes_ctx(fn: Callable[..., Any]) -> bool:
    """Whether a node function is called as ``fn(data, ctx)`` rather than ``fn(data)``:
    it names a second positional parameter, or takes ``*args`` after the first.
    A function whose signature cannot be read gets ``data`` only."""
    sig = _signature(fn)
    if sig is None:
        return False
    p = _Params.of(sig)
    return p.accepts(2) and (p.named >= 2 or (p.named == 1 and p.star))


def _fname(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return f"partial({_fname(fn.func)})"
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else f"{type(fn).__name__} object"


def check_fn(
    fn: Callable[..., Any],
    where: str,
    *,
    nargs: tuple[int, ...],
    shape: str,
    generators: bool = False,
    sync_only: bool = False,
) -> None:
    """Raise DefinitionError (``where``: what the function is for) unless ``fn`` can
    be called with one of ``nargs`` positional arguments and is a kind of function
    aioflow can use. ``shape`` says what is allowed. ``generators`` lets plain
    generator functions through (their result is iterated); async generators never
    are. ``sync_only`` refuses ``async def`` (the result is used without awaiting)."""
    kind = _generator_kind(fn)
    if kind is not None and (not generators or kind == ASYNC_GEN):
        raise DefinitionError(
            f"{where}: {_fname(fn)} is {kind}; return the value instead of yielding it ({shape})"
        )
    if sync_only and is_async(fn):
        raise DefinitionError(f"{where}: {_fname(fn)} is async: {shape}")
    sig = _signature(fn)
    if sig is None:
        return
    params = _Params.of(sig)
    if not any(params.accepts(n) for n in nargs):
        bare = sig.replace(
            parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
            return_annotation=sig.empty,
        )
        raise DefinitionError(f"{where}: {_fname(fn)}{bare} {params.why_not(nargs)}: {shape}")


AGGREGATE_SHAPE = "aggregate(values) takes one positional parameter (sync or async)"
NODE_ON_FAILURE_SHAPE = "on_failure(error, data, ctx) takes 3 positional parameters (sync or async)"
KEY_SHAPE = "a key function takes one positional parameter, data (sync or async)"
FORWARD_SHAPE = "forward(value) is a plain function of one positional parameter"
CHOOSE_SHAPE = "choose(data) takes one positional parameter (sync or async)"
SPLIT_SHAPE = "split(data) takes one positional parameter and returns a mapping (sync or async)"
FLOW_HOOK_SHAPES = {
    "on_failure": "on_failure(error, ctx) takes 2 positional parameters (sync or async)",
    "finally_": "finally_(status, ctx) takes 2 positional parameters (sync or async)",
}


def _check_hook(fn: Callable[..., Any], where: str, shape: str, nargs: int = 1) -> None:
    if not callable(fn):
        raise DefinitionError(f"{where} must be a function, got {fn!r}")
    check_fn(fn, where, nargs=(nargs,), shape=shape)


def _limits(
    name: Any,
    concurrency: int | None,
    concurrency_key: KeyFn | None,
    rate: str | None,
    rate_key: KeyFn | None,
) -> dict[str, Any]:
    label = getattr(name, "__name__", name)
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise DefinitionError(f"node {label!r}: concurrency must be an int >= 1")
    if concurrency_key is not None and (concurrency is None or not callable(concurrency_key)):
        raise DefinitionError(
            f"node {label!r}: concurrency_key must be a function, used with concurrency="
        )
    if rate_key is not None and (rate is None or not callable(rate_key)):
        raise DefinitionError(f"node {label!r}: rate_key must be a function, used with rate=")
    try:
        parsed = Rate.parse(rate) if rate is not None else None
    except DefinitionError as e:
        raise DefinitionError(f"node {label!r}: {e}") from None
    return {
        "concurrency": concurrency,
        "concurrency_key": concurrency_key,
        "rate": parsed,
        "rate_key": rate_key,
    }


class Dag:
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
        limits = _limits(name, concurrency, concurrency_key, rate, rate_key)
        if callable(name) and fn is None:
            return self._node(
                self._fn_name(name), name, after, retries, timeout, aggregate, on_failure, limits
            )
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
                name if name is not None else self._fn_name(f),
                f,
                after,
                retries,
                timeout,
                aggregate,
                on_failure,
                limits,
            )

        return decorator

    def _fn_name(self, fn: Any) -> str:
        name = getattr(fn, "__name__", None)
        if not isinstance(name, str):
            raise DefinitionError(
                f"{self._label()}: {fn!r} has no __name__ to name its vertex after: "
                "give the name, node('name', fn)"
            )
        return name

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
        if isinstance(retries, RetryPolicy):
            retry = retries
        elif retries is None:
            retry = RetryPolicy()
        elif isinstance(retries, int) and not isinstance(retries, bool):
            if retries < 0:
                raise DefinitionError(f"node {name!r}: retries must be >= 0, got {retries}")
            retry = RetryPolicy(retries=retries)
        else:
            raise DefinitionError(f"node {name!r}: retries must be an int or a RetryPolicy")
        if timeout is not None and (
            isinstance(timeout, bool) or not (isinstance(timeout, int | float) and timeout > 0)
        ):
            raise DefinitionError(f"node {name!r}: timeout must be a positive number of seconds")
        where = f"{self._label()}: node {name!r}"
        check_fn(fn, where, nargs=(1, 2), shape=NODE_SHAPE)
        if aggregate is not None:
            _check_hook(aggregate, f"{where}: aggregate", AGGREGATE_SHAPE)
        if on_failure is not None:
            _check_hook(on_failure, f"{where}: on_failure", NODE_ON_FAILURE_SHAPE, nargs=3)
        for key in ("concurrency_key", "rate_key"):
            if limits and limits.get(key) is not None:
                _check_hook(limits[key], f"{where}: {key}", KEY_SHAPE)
        self._add(
            Vertex(
                name,
                "node",
                fn=fn,
                retry=retry,
                timeout=float(timeout) if timeout is not None else None,
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
        if forward is not None and not data:
            raise DefinitionError(f"edge {a!r} -> {b!r}: forward= makes no sense with data=False")
        if forward is not None:
            if not callable(forward):
                raise DefinitionError(
                    f"{self._label()}: edge {a!r} -> {b!r}: forward must be a function, "
                    f"got {forward!r}"
                )
            check_fn(
                forward,
                f"{self._label()}: edge {a!r} -> {b!r}: forward",
                nargs=(1,),
                shape=FORWARD_SHAPE,
                generators=True,
                sync_only=True,
            )
        if any(e.src == a and e.dst == b for e in self.edges):
            raise DefinitionError(f"{self._label()}: duplicate edge {a!r} -> {b!r}")
        path = self._path(b, a)
        if path is not None:
            cycle = " -> ".join([a, *path])
            raise DefinitionError(f"{self._label()}: edge {a!r} -> {b!r} makes a cycle: {cycle}")
        self.edges.append(Edge(a, b, data=data, forward=forward))
        self._plan = None

    def _path(self, start: str, goal: str) -> list[str] | None:
        """A path start -> ... -> goal along existing edges, if any."""
        children: dict[str, list[str]] = {}
        for e in self.edges:
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

    def subdag(self, name: str, dag: Dag, *, after: After = None) -> str:
        """Embed ``dag`` as the vertex ``name``: its entries receive this vertex's
        input, and its output (one exit's value, or ``{exit: value}``) is this
        vertex's output. The same dag may be embedded any number of times."""
        if not isinstance(dag, Dag):
            raise DefinitionError(f"subdag {name!r}: expected a Dag, got {type(dag).__name__}")
        if dag is self or dag._contains(self):
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
        if not callable(choose):
            raise DefinitionError(f"branch {name!r}: choose must be a function, got {choose!r}")
        conds = list(conditions) if conditions is not None else []
        if not conds:
            raise DefinitionError(f"branch {name!r} has no conditions")
        for c in conds:
            check_name(c, f"condition of branch {name!r}")
        where = f"{self._label()}: branch {name!r}"
        # a sync generator of conditions works (its items are read); an async one does not
        check_fn(choose, f"{where}: choose", nargs=(1,), shape=CHOOSE_SHAPE, generators=True)
        if aggregate is not None:
            _check_hook(aggregate, f"{where}: aggregate", AGGREGATE_SHAPE)
        if len(set(conds)) != len(conds):
            raise DefinitionError(f"branch {name!r} declares a condition twice: {conds}")
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
        if split is None or not callable(split):
            raise DefinitionError(f"foreach {name!r} needs a split function, got {split!r}")
        where = f"{self._label()}: foreach {name!r}"
        _check_hook(split, f"{where}: split", SPLIT_SHAPE)
        if aggregate is not None:
            _check_hook(aggregate, f"{where}: aggregate", AGGREGATE_SHAPE)
        inner = Dag()
        self._add(Vertex(name, "foreach", split=split, dag=inner, aggregate=aggregate), after)
        return inner

    def _contains(self, other: Dag, _seen: set[int] | None = None) -> bool:
        seen = _seen if _seen is not None else set()
        if id(self) in seen:
            return False
        seen.add(id(self))
        for v in self.vertices.values():
            for d in [v.dag, *v.branches.values()]:
                if d is None:
                    continue
                if d is other or d._contains(other, seen):
                    return True
        return False

    # -- introspection ------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The graph as JSON-able data (vertices, edges, entries, exits, nested dags)."""
        from .plan import describe

        return describe(self)


class Flow(Dag):
    """A named dag that can be run. ``name`` matches ``^[a-z0-9][a-z0-9_-]{0,63}$``.

    ``partitions`` spreads the flow's runs over that many streams (and Redis
    Cluster slots). ``"auto"`` (the default) is 1 on a single Redis and, on a
    Redis Cluster, the fewest partitions that every master holds some of, none
    more than twice another's share; it is settled when a worker or gateway
    registers the flow.
    ``on_failure(error, ctx)`` runs once when a run fails; ``finally_(status,
    ctx)`` once when a run ends, whatever the outcome.
    """

    def __init__(
        self,
        name: str,
        *,
        partitions: int | Literal["auto"] = "auto",
        on_failure: Callable[..., Any] | None = None,
        finally_: Callable[..., Any] | None = None,
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
            _check_hook(hook, where, FLOW_HOOK_SHAPES[what], nargs=2)
        self.name = name
        self.partitions = partitions
        self.on_failure = on_failure
        self.finally_ = finally_
        self.schedules: dict[str, Schedule] = {}

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
