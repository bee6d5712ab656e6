"""Run status and the state of a run as stored in Redis."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from . import codec


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


@dataclass
class VertexState:
    status: str
    attempts: int = 0


@dataclass
class RunState:
    """A snapshot of one run. ``result`` is set when completed, ``error`` when failed;
    ``vertices`` maps each vertex address that started to its status and attempts;
    ``callback`` is the callback's delivery report and ``hook_errors`` lists flow
    hooks (``on_failure``, ``finally_``) that raised."""

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

    def to_json(self) -> bytes:
        """The state as JSON (bytes values written ``{"$bytes": ...}``)."""
        doc: dict[str, Any] = {
            "run_id": self.run_id,
            "flow": self.flow,
            "status": self.status.value,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "vertices": {
                a: {"status": v.status, "attempts": v.attempts} for a, v in self.vertices.items()
            },
        }
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
    for k, v in h.items():
        if k.startswith((b"s:$", b"a:$")):  # internal vertices ($out, $final)
            continue
        if k.startswith(b"s:"):
            vertices.setdefault(k[2:].decode(), VertexState("")).status = v.decode()
        elif k.startswith(b"a:"):
            vertices.setdefault(k[2:].decode(), VertexState("")).attempts = int(v)
    status = Status(h[b"status"].decode())
    err = h.get(b"err")
    cb = h.get(b"cb")
    hook_errors = h.get(b"hook_errors")
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
        options=codec.loads(h[b"opts"]) if h.get(b"opts") else {},
        callback=codec.loads(cb) if cb else None,
        hook_errors=codec.loads(hook_errors) if hook_errors else None,
    )
