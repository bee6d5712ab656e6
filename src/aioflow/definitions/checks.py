"""Checks on what a dag is built from, each raising
:class:`~aioflow.DefinitionError` naming the culprit: names, the options of a
node, and the shape of every function given (node functions, hooks, key
functions, ``forward``, ``choose``, ``split``). Checks of the finished graph
as a whole run when it is compiled (:func:`~aioflow.definitions.plan.compile_dag`)."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from aioflow.core.errors import DefinitionError

from .policy import Rate, RetryPolicy

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

KeyFn: TypeAlias = Callable[[Any], "str | Awaitable[str]"]


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


def check_hook(fn: Callable[..., Any], where: str, shape: str, nargs: int = 1) -> None:
    if not callable(fn):
        raise DefinitionError(f"{where} must be a function, got {fn!r}")
    check_fn(fn, where, nargs=(nargs,), shape=shape)


def node_limits(
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


# -- constructs -------------------------------------------------------------------------


def fn_name(label: str, fn: Any) -> str:
    """The name a vertex gets after its function."""
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str):
        raise DefinitionError(
            f"{label}: {fn!r} has no __name__ to name its vertex after: "
            "give the name, node('name', fn)"
        )
    return name


def node_settings(
    label: str,
    name: str,
    fn: Callable[..., Any],
    retries: int | RetryPolicy | None,
    timeout: float | None,
    aggregate: Callable[[Any], Any] | None,
    on_failure: Callable[..., Any] | None,
    limits: dict[str, Any] | None,
) -> tuple[RetryPolicy, float | None]:
    """The retry policy and timeout (seconds) of node ``name`` of the dag ``label``
    names, once its options and functions pass."""
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
    where = f"{label}: node {name!r}"
    check_fn(fn, where, nargs=(1, 2), shape=NODE_SHAPE)
    if aggregate is not None:
        check_hook(aggregate, f"{where}: aggregate", AGGREGATE_SHAPE)
    if on_failure is not None:
        check_hook(on_failure, f"{where}: on_failure", NODE_ON_FAILURE_SHAPE, nargs=3)
    for key in ("concurrency_key", "rate_key"):
        if limits and limits.get(key) is not None:
            check_hook(limits[key], f"{where}: {key}", KEY_SHAPE)
    return retry, float(timeout) if timeout is not None else None


def check_forward(
    label: str, src: str, dst: str, data: bool, forward: Callable[[Any], Any] | None
) -> None:
    """Check the ``forward`` of the edge ``src -> dst``."""
    if forward is not None and not data:
        raise DefinitionError(f"edge {src!r} -> {dst!r}: forward= makes no sense with data=False")
    if forward is not None:
        if not callable(forward):
            raise DefinitionError(
                f"{label}: edge {src!r} -> {dst!r}: forward must be a function, got {forward!r}"
            )
        check_fn(
            forward,
            f"{label}: edge {src!r} -> {dst!r}: forward",
            nargs=(1,),
            shape=FORWARD_SHAPE,
            generators=True,
            sync_only=True,
        )


def branch_conditions(
    label: str,
    name: str,
    choose: Any,
    conditions: Iterable[str] | None,
    aggregate: Callable[[Any], Any] | None,
) -> list[str]:
    """The conditions of branch ``name``, once they and its functions pass."""
    if not callable(choose):
        raise DefinitionError(f"branch {name!r}: choose must be a function, got {choose!r}")
    conds = list(conditions) if conditions is not None else []
    if not conds:
        raise DefinitionError(f"branch {name!r} has no conditions")
    for c in conds:
        check_name(c, f"condition of branch {name!r}")
    where = f"{label}: branch {name!r}"
    # a sync generator of conditions works (its items are read); an async one does not
    check_fn(choose, f"{where}: choose", nargs=(1,), shape=CHOOSE_SHAPE, generators=True)
    if aggregate is not None:
        check_hook(aggregate, f"{where}: aggregate", AGGREGATE_SHAPE)
    if len(set(conds)) != len(conds):
        raise DefinitionError(f"branch {name!r} declares a condition twice: {conds}")
    return conds


def check_foreach(
    label: str, name: str, split: Any, aggregate: Callable[[Any], Any] | None
) -> None:
    """Check the functions of foreach ``name``."""
    if split is None or not callable(split):
        raise DefinitionError(f"foreach {name!r} needs a split function, got {split!r}")
    where = f"{label}: foreach {name!r}"
    check_hook(split, f"{where}: split", SPLIT_SHAPE)
    if aggregate is not None:
        check_hook(aggregate, f"{where}: aggregate", AGGREGATE_SHAPE)
