"""Steering a run: pause, resume or stop it, retry it once it failed, and resolve
its waiting vertices (a signal, an event's or a child run's outcome)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aioflow.core import codec
from aioflow.core.errors import InvalidRunId, InvalidTransition, LimitExceeded, RunNotFound
from aioflow.definitions.plan import resolve
from aioflow.definitions.status import Status
from aioflow.definitions.waits import WaitSpec
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import Backend

from .catalog import Catalog
from .rerun import rerun

log = logging.getLogger("aioflow.engine")


async def control(
    backend: Backend, rid: RunId, action: str, *, clock: Callable[[], float], result_ttl: float
) -> Status:
    """See :meth:`aioflow.engine.engine.Engine.control`. Stopping a run also stops
    the child runs its ``call`` vertices started (the run's end does it again, in a
    worker: this is the fast path)."""
    await backend.start()
    res = await SCRIPTS.call(
        backend.fast,
        "control",
        rid.stream,
        rid.key,
        action,
        repr(clock()),
        int(result_ttl * 1000),
    )
    code, status = res[0].decode(), res[1].decode()
    if code != "ok":
        if not status:
            raise RunNotFound(f"run {rid} not found (it never existed or it expired)")
        raise InvalidTransition(f"cannot {action} run {rid}: it is {status}")
    if action == "stop":
        await backend.redis.publish(keys.CONTROL, f"stop {rid}")
        await stop_children(backend, rid, clock=clock, result_ttl=result_ttl)
    return Status(status)


async def stop_children(
    backend: Backend,
    rid: RunId,
    *,
    clock: Callable[[], float],
    result_ttl: float,
    fields: dict[bytes, bytes] | None = None,
) -> int:
    """Stop the live child runs of ``rid``'s ``call`` vertices (``fields``: its run
    hash, when read already); answers how many were stopped."""
    if fields is None:
        flat: Any = await backend.fast.execute("HGETALL", rid.run, idempotent=True)
        if isinstance(flat, dict):
            fields = flat
        else:
            fields = dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {}
    stopped = 0
    for k, v in fields.items():
        if not k.startswith(b"ch:"):
            continue
        try:
            child = RunId.parse(v.decode())
            await control(backend, child, "stop", clock=clock, result_ttl=result_ttl)
            stopped += 1
        except (InvalidTransition, RunNotFound, InvalidRunId):
            pass  # ended already
    return stopped


async def retry(backend: Backend, catalog: Catalog, rid: RunId) -> int:
    """See :meth:`aioflow.engine.engine.Engine.retry`."""
    return await rerun(backend.redis, rid, await catalog.run_plan(rid))


async def _resolve(
    fast: Any, stream: str, uid: str, addr: str, data: bytes, now: float, *, keep: bool
) -> int:
    res = await SCRIPTS.call(
        fast, "resolve", stream, uid, addr, "e", data, repr(now), "1" if keep else ""
    )
    return int(res)


async def resolve_wait(
    fast: Any, stream: str, uid: str, addr: str, data: bytes, now: float
) -> bool:
    """Resolve the waiting vertex ``addr`` of run ``uid`` (whose partition's stream is
    ``stream``: any priority) with ``data`` (encoded bytes: an event's data, or a
    child run's outcome): one ``resolve`` script call, on the run's slot. ``fast`` is
    a backend's ``fast`` connection. Answers False when the run ended or is gone, or
    the vertex has its output already; True when taken (the first resolution of the
    vertex's attempt wins: a later one is dropped by the claim). Idempotent: safe to
    call again after a lost answer."""
    return await _resolve(fast, stream, uid, addr, data, now, keep=False) == 1


async def signal(
    backend: Backend,
    catalog: Catalog,
    rid: RunId,
    vertex: str,
    data: Any,
    *,
    clock: Callable[[], float],
    max_value: int | None,
) -> bool:
    """Send ``data`` to the ``wait`` vertex ``vertex`` (its address: ``name``, or
    ``group[key]/name`` inside a subdag, branch or foreach) of run ``rid``: its output
    becomes ``data``, unless an event, an earlier signal or its timeout resolved it
    first. A signal that comes before the run reaches the wait is kept, and the wait
    takes it when it starts. Answers True when taken, False when the run ended or the
    vertex is resolved already.

    Raises :class:`RunNotFound` (no such run), :class:`InvalidTransition` (``vertex``
    is not a wait vertex of the run's flow version), :class:`LimitExceeded` (``data``
    encoded is larger than ``max_value``)."""
    await backend.start()
    plan = await catalog.run_plan(rid)
    try:
        _, node, _ = resolve(plan, vertex)
    except (KeyError, ValueError):
        node = None
    if node is None or node.kind != "wait":
        raise InvalidTransition(f"cannot signal {vertex!r} of run {rid}: it is not a wait vertex")
    spec = node.vertex.spec if node.vertex is not None else None
    if isinstance(spec, WaitSpec) and spec.data is not None:
        spec.data.load(data)  # data_type=: InvalidInput, and nothing is sent
    value = codec.encode(data)
    if max_value is not None and len(value) > max_value:
        raise LimitExceeded(
            f"the signal's data is {len(value)} bytes, larger than max_value={max_value}"
        )
    res = await _resolve(backend.fast, rid.stream, rid.key, vertex, value, clock(), keep=True)
    if res < 0:
        raise RunNotFound(f"run {rid} not found (it never existed or it expired)")
    return res == 1
