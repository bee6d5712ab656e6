"""Run status and the state of a run as stored in Redis."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from aioflow.core import codec


class Status(enum.StrEnum):
    """Where a run stands. Finished runs are ``completed``, ``failed`` or ``stopped``."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (Status.STOPPED, Status.COMPLETED, Status.FAILED)


class VertexStatus(enum.StrEnum):
    """Where one vertex of a run stands (a group's status covers its scopes).

    Live: ``running``; ``parked`` (its run is paused: it starts on resume);
    ``retrying`` (an attempt failed, the next one waits for its backoff);
    ``waiting`` (for a concurrency slot or a rate token; a ``wait``, ``sleep`` or
    ``call`` vertex for its event or signal, its time or its child run); ``queued``
    (enqueued again: handed back by a draining worker, or by a retry of its run).
    Final: ``completed``, ``failed``, and ``cancelled``: its run failed or was
    stopped before it finished, so it will not run again unless the run is retried.
    A finished run has no live vertex. Vertices a run never reached (untaken branch
    paths, items or children it never started)
    are not listed at all, whatever the run's status."""

    RUNNING = "running"
    PARKED = "parked"
    RETRYING = "retrying"
    WAITING = "waiting"
    QUEUED = "queued"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (VertexStatus.COMPLETED, VertexStatus.FAILED, VertexStatus.CANCELLED)

    @classmethod
    def _missing_(cls, value: object) -> VertexStatus | None:
        # as stored by older versions: a vertex cancelled by a stop; one re-enqueued
        # by a retry (its status cleared)
        if value == "stopped":
            return cls.CANCELLED
        return cls.QUEUED if value == "" else None


@dataclass
class VertexState:
    """One vertex of a run. ``started`` and ``ended`` (unix seconds, worker clock) are
    those of its last attempt (``ended`` is None while it runs; for a vertex cancelled
    while it ran, when its run ended); ``queued`` is when its message was last enqueued
    (the stream entry's time, Redis clock, ms) and ``queue_wait`` is
    ``started - queued``. ``deadline`` (unix seconds) is when a waiting ``wait``
    times out or a ``sleep`` ends (None: no deadline, or not such a vertex);
    ``child`` is the run id of the child run a ``call`` vertex started last. A
    waiting vertex has no ``ended``."""

    status: VertexStatus
    attempts: int = 0
    started: float | None = None
    ended: float | None = None
    queued: float | None = None
    deadline: float | None = None
    child: str | None = None

    def __post_init__(self) -> None:
        self.status = VertexStatus(self.status)

    @property
    def queue_wait(self) -> float | None:
        if self.started is None or self.queued is None:
            return None
        return max(0.0, self.started - self.queued)

    def to_doc(self) -> dict[str, Any]:
        """The vertex as JSON-able data; ``deadline`` and ``child`` only when set."""
        doc: dict[str, Any] = {
            "status": self.status.value,
            "attempts": self.attempts,
            "started": self.started,
            "ended": self.ended,
            "queued": self.queued,
            "queue_wait": self.queue_wait,
        }
        if self.deadline is not None:
            doc["deadline"] = self.deadline
        if self.child is not None:
            doc["child"] = self.child
        return doc


@dataclass
class RunState:
    """A snapshot of one run. ``result`` is set when completed, ``error`` when failed;
    ``vertices`` maps each vertex address that started to its status and attempts;
    ``callback`` is the callback's delivery report and ``hook_errors`` lists flow
    hooks (``on_failure``, ``finally_``) that raised; ``version`` is the flow
    version the run is pinned to (None for runs submitted before versions);
    ``parent`` is the run id of the run whose ``call`` vertex started this one."""

    run_id: str
    flow: str
    status: Status
    created: float | None = None
    started: float | None = None
    ended: float | None = None
    vertices: dict[str, VertexState] = field(default_factory=dict)
    result: Any = None
    error: dict[str, Any] | None = None
    options: dict[str, list[str]] = field(default_factory=dict)
    callback: dict[str, Any] | None = None
    hook_errors: list[dict[str, Any]] | None = None
    version: str | None = None
    parent: str | None = None

    def to_json(self) -> bytes:
        """The state as JSON (bytes values written ``{"$bytes": ...}``)."""
        doc: dict[str, Any] = {
            "run_id": self.run_id,
            "flow": self.flow,
            "version": self.version,
            "status": self.status.value,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "vertices": {a: v.to_doc() for a, v in self.vertices.items()},
        }
        if self.parent is not None:
            doc["parent"] = self.parent
        if self.status is Status.COMPLETED:
            doc["result"] = self.result
        if self.error is not None:
            doc["error"] = self.error
        if self.callback is not None:
            doc["callback"] = self.callback
        if self.hook_errors is not None:
            doc["hook_errors"] = self.hook_errors
        return codec.dumps(doc)


def _f(raw: bytes | None) -> float | None:
    return float(raw) if raw else None


def parse_state(run_id: str, flow: str, h: dict[bytes, bytes]) -> RunState:
    vertices: dict[str, VertexState] = {}

    def vertex(k: bytes) -> VertexState:
        addr = k[2:].decode()
        vs = vertices.get(addr)
        if vs is None:
            # no status field: re-enqueued by a retry of an older version
            vs = vertices[addr] = VertexState(VertexStatus.QUEUED)
        return vs

    for k, v in h.items():
        if k[1:3] == b":$":  # internal vertices ($out, $final)
            continue
        if k.startswith(b"s:"):
            vertex(k).status = VertexStatus(v.decode())
        elif k.startswith(b"a:"):
            vertex(k).attempts = int(v)
        elif k.startswith(b"t:"):  # "started queued_ms", set when an attempt starts
            started, _, queued = v.partition(b" ")
            vs = vertex(k)
            vs.started = float(started)
            vs.queued = int(queued) / 1000 if queued else None
        elif k.startswith(b"e:"):
            vertex(k).ended = float(v)
        elif k.startswith(b"dl:"):  # (three-letter prefixes: k[1:] has a two-letter one)
            vertex(k[1:]).deadline = float(v) if v else None
        elif k.startswith(b"ch:"):
            vertex(k[1:]).child = v.decode()
    for vs in vertices.values():
        if vs.status is not VertexStatus.WAITING:
            vs.deadline = None  # the deadline of a wait that is over
        # the end of an earlier attempt (or of a group's open) is not this attempt's
        if vs.status in (VertexStatus.RUNNING, VertexStatus.WAITING) or (
            vs.ended is not None and vs.ended < (vs.started or 0)
        ):
            vs.ended = None
    status = Status(h[b"status"].decode())
    err = h.get(b"err")
    cb = h.get(b"cb")
    hook_errors = h.get(b"hook_errors")
    options = codec.loads(h[b"opts"]) if h.get(b"opts") else {}
    parent = options.get("parent") if isinstance(options, dict) else None
    return RunState(
        run_id=run_id,
        flow=flow,
        status=status,
        created=_f(h.get(b"created")),
        started=_f(h.get(b"started")),
        ended=_f(h.get(b"ended")),
        vertices=dict(sorted(vertices.items())),
        result=codec.decode(h[b"result"]) if b"result" in h else None,
        error=codec.loads(err) if err else None,
        options=options,
        callback=codec.loads(cb) if cb else None,
        hook_errors=codec.loads(hook_errors) if hook_errors else None,
        version=h[b"v"].decode() if h.get(b"v") else None,
        parent=parent[0] if isinstance(parent, list) and parent else None,
    )
