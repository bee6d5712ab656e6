"""Child flows: starting the child run of a ``call`` vertex, and reporting a child
run's end to its parent.

A child's run id derives from the parent run, the vertex's address and the id of
the message that started the vertex: a redelivery of that message finds the child
it started (the submit answers "exists"), a retry (a new message) starts a new one.
The child pins its flow's version like any submit of a Flow object. Before the
child is submitted the parent's run hash records it (``ch:<addr>``, the state's
``child``) and that the parent's end runs hooks (``hooks``), so a parent that
fails or is stopped stops its live children from its ``$final`` message. The child
is submitted with the options ``parent`` and ``parent_vertex`` and with hooks, so
its own end (its ``$final`` message, :class:`~aioflow.worker.callbacks.RunEnd`)
resolves the parent's vertex with its outcome (:func:`outcome`), once the parent
confirms that this is the child it waits for.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aioflow.core.settings import Settings
from aioflow.definitions.model import Dag, Flow
from aioflow.definitions.status import Status
from aioflow.engine import steering
from aioflow.engine.engine import Engine
from aioflow.store.keys import RunId
from aioflow.store.topology import Backend

if TYPE_CHECKING:
    from .context import Context
    from .message import Msg

log = logging.getLogger("aioflow.worker")


def child_key(parent: str, addr: str, message_id: bytes) -> str:
    """The run id (caller-chosen form) of the child that message ``message_id`` of
    vertex ``addr`` of run ``parent`` starts."""
    digest = hashlib.sha256(f"{parent}\n{addr}\n".encode() + message_id).hexdigest()
    return f"c-{digest[:40]}"


def outcome(status: str, run_id: str, payload: bytes) -> bytes:
    """A child run's end as its parent's vertex receives it: status, run id, then
    the result (encoded) or the error (JSON)."""
    return f"{status}\n{run_id}\n".encode() + payload


def parse_outcome(raw: bytes) -> tuple[str, str, bytes]:
    status, _, rest = raw.partition(b"\n")
    run_id, _, payload = rest.partition(b"\n")
    return status.decode(), run_id.decode(), payload


_has_calls: dict[int, bool] = {}


def has_calls(dag: Dag) -> bool:
    """Whether ``dag`` has a call vertex, at any depth."""
    hit = _has_calls.get(id(dag))
    if hit is None:
        hit = any(
            v.kind == "call"
            or any(has_calls(d) for d in [v.dag, *v.branches.values()] if d is not None)
            for v in dag.vertices.values()
        )
        _has_calls[id(dag)] = hit
    return hit


class Calls:
    """Starts child runs through an engine on the worker's own connections."""

    def __init__(self, backend: Backend, settings: Settings, clock: Callable[[], float]) -> None:
        self.backend = backend
        self.settings = settings
        self.clock = clock
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine.from_settings(
                self.backend.given, self.settings, backend=self.backend, clock=self.clock
            )
        return self._engine

    async def aclose(self) -> None:
        if self._engine is not None:
            await self._engine.close()

    async def start(self, m: Msg, flow: Flow, data: Any) -> str:
        """Start (or find, on a redelivery) the child run of ``m``; answers its id."""
        rid = m.rid
        eng = self.engine
        info = replace(await eng.pin(flow), hooks=True)  # its end reports to the parent
        child = await eng.new_run_id(info.name, child_key(str(rid), m.addr, m.id), info)
        fields: list[str | bytes] = [f"ch:{m.addr}", str(child), "hooks", "1"]
        if m.data is not None:
            fields += [f"wi:{m.addr}", m.data]  # the input a retry starts again from
        await self.backend.fast.execute("HSET", rid.run, *fields, idempotent=True)
        options = {"parent": [str(rid)], "parent_vertex": [m.addr]}
        await eng.submit(flow, data, options=options, rid=child, info=info)
        return str(child)


async def run_ended(
    backend: Backend,
    settings: Settings,
    clock: Callable[[], float],
    flow: Flow,
    status: Status,
    fetched: list[bytes | None],
    ctx: Context,
) -> None:
    """What a run's end means for its family: a child's outcome goes to the parent's
    vertex; a parent that failed or stopped stops its live children. Retried a few
    times while Redis is away (the run's hooks ran already)."""
    for attempt in range(5):
        try:
            await _report(backend, clock, status, fetched, ctx)
            if status is not Status.COMPLETED and has_calls(flow):
                await steering.stop_children(
                    backend, RunId.parse(ctx.run_id), clock=clock, result_ttl=settings.result_ttl
                )
            return
        except Exception as e:
            if attempt == 4:
                log.error("run %s ended: telling its parent or children failed: %r", ctx.run_id, e)
                return
            await asyncio.sleep(0.2 * 2**attempt)


async def _report(
    backend: Backend,
    clock: Callable[[], float],
    status: Status,
    fetched: list[bytes | None],
    ctx: Context,
) -> None:
    parent, vertex = ctx.options.get("parent"), ctx.options.get("parent_vertex")
    if not parent or not vertex:
        return
    prid = RunId.parse(parent[0])
    # the options are the submitter's: only the child the parent recorded reports
    mine: Any = await backend.fast.execute("HGET", prid.run, f"ch:{vertex[0]}", idempotent=True)
    if mine is None or mine.decode() != ctx.run_id:
        return
    err, result = fetched[1], fetched[2]
    payload = (result if status is Status.COMPLETED else err) or b""
    data = outcome(status.value, ctx.run_id, payload)
    await steering.resolve_wait(backend.fast, prid.stream, prid.key, vertex[0], data, clock())
