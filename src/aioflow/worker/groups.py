"""Subdag, branch and foreach vertices in the worker: opening a group (choose or
split, then the entries of every chosen scope) and closing it (the scopes'
results collected into the group's output)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from aioflow.core import codec
from aioflow.core.errors import DefinitionError, LimitExceeded
from aioflow.definitions.plan import child_scope

from .message import ExecutorPart, Msg


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


async def open_group(ex: ExecutorPart, m: Msg, data: Any) -> None:
    """Run choose/split and enqueue the entries of every chosen scope."""
    node = m.node
    v = node.vertex
    assert v is not None
    items: dict[str, Any]
    if node.kind == "subdag":
        items = {"": data}
    elif node.kind == "branch":
        assert v.choose is not None
        chosen = await _maybe_await(v.choose(data))
        chosen = [chosen] if isinstance(chosen, str) else list(dict.fromkeys(chosen or ()))
        for c in chosen:
            if c not in node.branches:
                raise DefinitionError(
                    f"branch {m.addr!r} chose undeclared condition {c!r}; "
                    f"declared: {sorted(node.branches)}"
                )
        items = {c: data for c in chosen}
    else:
        assert v.split is not None
        split = await _maybe_await(v.split(data))
        if not isinstance(split, Mapping):
            raise TypeError(
                f"foreach {m.addr!r}: split must return a mapping of key to value, "
                f"got {type(split).__name__}"
            )
        if len(split) > ex.settings.max_foreach:
            raise LimitExceeded(
                f"foreach {m.addr!r}: split returned {len(split)} items, "
                f"more than max_foreach={ex.settings.max_foreach}"
            )
        items = {str(k): val for k, val in split.items()}
    if not items:
        out: Any = {}
        if v.aggregate is not None:
            out = await _maybe_await(v.aggregate(out))
        value = ex._encode(m, out)
        ex._queue(m, ex._success_ops(m, value), value=value, marker=f"o:{m.addr}")
        return
    ops: list[Any] = ["S", f"gk:{m.addr}", codec.dumps(list(items)), ""]
    for key, val in items.items():
        plan = node.branches[key] if node.kind == "branch" else node.inner
        assert plan is not None
        scope = child_scope(m.scope, node.name, key)
        enc = ex._encode(m, val, f"item {key!r}")
        ops += ["S", f"gi:{scope}", enc, ""]
        for e in plan.entries:
            ops += ["E", scope + e, "n", enc]
    ex._queue(m, ops, value=str(len(items)).encode(), vstatus="running")


async def close_group(ex: ExecutorPart, m: Msg) -> tuple[bytes, list[Any]]:
    """Collect the results of a group's scopes into the group's output."""
    node = m.node
    v = node.vertex
    assert v is not None and m.fetched[0] is not None
    ks: list[str] = codec.loads(m.fetched[0])
    fields = []
    for k in ks:
        plan = node.branches[k] if node.kind == "branch" else node.inner
        assert plan is not None
        fields.append(f"o:{child_scope(m.scope, node.name, k)}{plan.exit}")
    vals: Any = await ex.backend.redis.hmget(m.rid.run, fields)
    results = {
        k: codec.decode(raw) if raw is not None else None for k, raw in zip(ks, vals, strict=True)
    }
    out: Any = results[""] if node.kind == "subdag" else results
    if v.aggregate is not None:
        out = await _maybe_await(v.aggregate(out))
    value = ex._encode(m, out)
    return value, ex._success_ops(m, value)
