"""A claimed vertex message (:class:`Msg`), and what the parts of the executor
(:mod:`.groups`, :mod:`.waits`) need of it (:class:`ExecutorPart`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aioflow.core.settings import Settings
from aioflow.definitions.model import Flow
from aioflow.definitions.plan import Plan, PNode
from aioflow.store.keys import RunId
from aioflow.store.topology import Backend


@dataclass(eq=False, slots=True)
class Msg:
    """A claimed vertex message and what the claim script read for it."""

    stream: str
    id: bytes
    flow: Flow
    plan: Plan
    node: PNode
    scope: str
    uid: str
    addr: str
    # "n" run the vertex (or open a group), "c" close a group, "f" run hooks; "e" and "t"
    # resolve a waiting vertex (wait, sleep, call: see .waits)
    kind: str
    data: bytes | None
    attempt: int = 0
    fetched: list[bytes | None] = field(default_factory=list)
    wants_ctx: bool = False
    trace: bytes | None = None
    # "stop", "drain" or "lease_lost" when the worker cancelled the task
    cancelled: str | None = None
    t0: float = 0.0  # perf_counter() when it started (metrics)
    vstatus: str = ""  # the vertex status its completion record sets
    timed_out: bool = False

    @property
    def rid(self) -> RunId:
        return RunId(self.flow.name, int(self.stream.split(":")[-2].rstrip("}")), self.uid)


class ExecutorPart(Protocol):
    """What :mod:`.groups` and :mod:`.waits` use of the
    :class:`~aioflow.worker.vertex.Executor`."""

    backend: Backend
    settings: Settings
    clock: Callable[[], float]
    tracing: bool
    _queue: Callable[..., None]
    _note_due: Callable[[float], None]

    def _input(self, m: Msg) -> Any: ...

    def _encode(self, m: Msg, out: Any, what: str = "output") -> bytes: ...

    def _success_ops(self, m: Msg, value: bytes) -> list[Any]: ...

    async def _failed(self, m: Msg, error: BaseException, data: Any) -> None: ...
