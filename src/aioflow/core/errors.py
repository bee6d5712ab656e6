"""Exceptions raised by aioflow.

Every exception aioflow raises on purpose derives from :class:`AioflowError`,
so ``except aioflow.AioflowError`` catches all of them::

    AioflowError
    ├── DefinitionError      a flow or dag is malformed (raised while building it)
    ├── ConfigError          a setting is invalid, or the Redis server is unsuitable
    ├── UnknownFlow          no worker or gateway ever registered that flow name
    │   └── UnknownVersion   the flow version asked for (or a run's pinned one) is not registered
    ├── UnknownSchedule      the flow's registered definition has no schedule of that name
    ├── RunNotFound          no run with that id (never existed, or expired)
    ├── InvalidRunId         a run id or flow name that does not match the allowed syntax
    ├── InvalidCallbackUrl   a callback URL that is not an absolute http(s) URL
    ├── InvalidPriority      a priority other than "high", "default" or "low"
    ├── InvalidCursor        a listing cursor that no page handed out
    ├── InvalidBatch         an item of a submit_many batch is invalid: nothing was submitted
    ├── InvalidInput         a run input does not match the flow's entry annotation: no run
    ├── InvalidTransition    pause/resume/stop/retry not allowed in the run's status
    ├── Unauthorized         an HTTP request without valid credentials (401; ``reason`` says why)
    ├── Forbidden            an HTTP request whose token's scope is too weak (403)
    ├── LimitExceeded        a value larger than ``max_value``, a foreach wider than ``max_foreach``
    ├── RunFailed            the run ended ``failed``: carries vertex, type, message, traceback
    │   └── ChildFailed      (inside a run) the child run of a ``call`` vertex failed or stopped
    ├── RunStopped           the run was stopped before it finished
    ├── ResultTimeout        waiting for a result took longer than asked (also a TimeoutError)
    ├── NodeTimeout          a node attempt ran past its ``timeout`` (seen inside RunFailed)
    ├── WaitTimeout          a ``wait`` vertex's timeout passed before an event or signal came
    ├── RedisUnavailable     Redis cannot be reached (connection refused, dropped, timed out)
    │   ├── RedisFull        Redis is at ``maxmemory`` and refused a write: nothing was applied
    │   ├── GatewayUnavailable  (HTTP client) the gateway or its Redis cannot be reached
    │   └── BatchIncomplete  Redis failed part-way through a submit_many: says which runs exist
    └── GatewayError         (HTTP client) the gateway refused a request: auth, limits...
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AioflowError",
    "BatchIncomplete",
    "ChildFailed",
    "ConfigError",
    "DefinitionError",
    "Forbidden",
    "GatewayError",
    "GatewayUnavailable",
    "InvalidBatch",
    "InvalidCallbackUrl",
    "InvalidCursor",
    "InvalidInput",
    "InvalidPriority",
    "InvalidRunId",
    "InvalidTransition",
    "LimitExceeded",
    "NodeTimeout",
    "RedisFull",
    "RedisUnavailable",
    "ResultTimeout",
    "RunFailed",
    "RunNotFound",
    "RunStopped",
    "Unauthorized",
    "UnknownFlow",
    "WaitTimeout",
    "UnknownVersion",
    "UnknownSchedule",
]


class AioflowError(Exception):
    """Root of every exception aioflow raises on purpose."""


class DefinitionError(AioflowError):
    """A flow or dag is malformed; the message names the offending vertex or edge."""


class ConfigError(AioflowError):
    """A setting is invalid, or the Redis server cannot be used safely."""


class UnknownFlow(AioflowError):
    """The flow name was never registered with this Redis by a worker or gateway."""


class UnknownVersion(UnknownFlow):
    """The flow version is not in the registry: never registered, or dropped after
    nobody served it for ``version_retention`` (retrying a run pinned to it)."""


class UnknownSchedule(AioflowError):
    """The flow's registered definition has no schedule of that name."""


class RunNotFound(AioflowError):
    """No run with this id exists: it never did, or it expired after ``result_ttl``."""


class InvalidRunId(AioflowError, ValueError):
    """A run id or flow name does not match the allowed syntax."""


class InvalidPriority(AioflowError, ValueError):
    """A run priority other than ``"high"``, ``"default"`` or ``"low"``."""


class InvalidCallbackUrl(AioflowError, ValueError):
    """A callback URL that is not an absolute http(s) URL."""


class InvalidCursor(AioflowError, ValueError):
    """A listing cursor that is not one a previous page handed out."""


class InvalidInput(AioflowError, ValueError):
    """A run input does not match the type its flow's entry vertex declares (its first
    parameter's annotation); raised at submit when the flow object is known, before
    anything is written: no run was created. ``errors`` is the list of validation
    errors, JSON-safe (each a dict with ``type``, ``loc``, ``msg`` and ``input``)."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__(message)


class InvalidTransition(AioflowError):
    """The requested control action is not allowed in the run's current status."""


class Unauthorized(AioflowError):
    """A gateway request without valid credentials. ``reason`` is one of
    ``missing``, ``malformed``, ``stale``, ``bad``, ``replayed``."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


class Forbidden(AioflowError):
    """A gateway request whose bearer token's scope is too weak for it."""


class LimitExceeded(AioflowError, ValueError):
    """A run input or node output larger than ``max_value``, or a foreach split
    wider than ``max_foreach``; the message names the vertex and the limit."""


class RunFailed(AioflowError):
    """The run ended ``failed``.

    ``vertex`` is the address of the vertex that failed, ``error_type`` the
    exception class name, ``message`` its text, ``traceback`` the formatted
    traceback from the worker and ``attempts`` how many times the vertex ran.
    """

    def __init__(
        self,
        run_id: str,
        *,
        vertex: str | None,
        error_type: str,
        message: str,
        traceback: str = "",
        attempts: int = 0,
    ) -> None:
        self.run_id = run_id
        self.vertex = vertex
        self.error_type = error_type
        self.message = message
        self.traceback = traceback
        self.attempts = attempts
        where = f" at vertex {vertex!r}" if vertex else ""
        super().__init__(f"run {run_id} failed{where}: {error_type}: {message}")

    @classmethod
    def from_error(cls, run_id: str, error: dict[str, Any]) -> RunFailed:
        return cls(
            run_id,
            vertex=error.get("vertex"),
            error_type=str(error.get("type", "Error")),
            message=str(error.get("message", "")),
            traceback=str(error.get("traceback", "")),
            attempts=int(error.get("attempts", 0)),
        )


class ChildFailed(RunFailed):
    """The child run a ``call`` vertex started ended ``failed`` or ``stopped``: the
    vertex fails with this error (its retries and ``on_failure`` apply, a retry
    starts a new child). ``child_run_id`` names the child run, ``status`` is how it
    ended; ``vertex``, ``error_type``, ``message`` and ``traceback`` are the child's
    own failure (empty for a stopped child)."""

    def __init__(self, child_run_id: str, status: str, error: dict[str, Any] | None = None) -> None:
        err = error or {}
        self.child_run_id = child_run_id
        self.status = status
        super().__init__(
            child_run_id,
            vertex=err.get("vertex"),
            error_type=str(err.get("type", "RunStopped" if status == "stopped" else "Error")),
            message=str(err.get("message", f"child run {child_run_id} was {status}")),
            traceback=str(err.get("traceback", "")),
            attempts=int(err.get("attempts", 0)),
        )


class WaitTimeout(AioflowError):
    """A ``wait`` vertex's ``timeout`` passed before a matching event or a signal
    arrived. The vertex fails with it (its retries and ``on_failure`` apply) unless
    the wait was given ``default=``, which is then its output."""


class RunStopped(AioflowError):
    """The run was stopped (``stop``) before it finished; it has no result."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id} was stopped")


class ResultTimeout(AioflowError, TimeoutError):
    """The run did not finish within the time the caller was willing to wait."""


class NodeTimeout(AioflowError):
    """A node attempt ran longer than its ``timeout`` and was cancelled."""


class RedisUnavailable(AioflowError):
    """Redis could not be reached; the operation may be retried once it is back."""


class RedisFull(RedisUnavailable):
    """Redis is at its ``maxmemory`` and refused the write (``-OOM``). Nothing of the
    call was applied; retry once memory is freed (raise ``maxmemory``, let finished
    runs expire, or lower ``result_ttl``). A :class:`RedisUnavailable`, so code that
    retries while Redis is away retries this too."""


class GatewayUnavailable(RedisUnavailable):
    """(HTTP client) The gateway cannot be reached, or answered that its Redis cannot
    (503): retry later. A :class:`RedisUnavailable`, so one ``except`` serves both modes."""


class GatewayError(AioflowError):
    """(HTTP client) The gateway answered an error no other exception stands for —
    401/403 (token missing, unknown or too weak), 413 (body too large)... ``status`` is
    the HTTP status, ``code`` and ``detail`` the JSON error's fields."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        super().__init__(f"gateway answered {status} {code}: {detail}")


class InvalidBatch(AioflowError, ValueError):
    """An item of a :meth:`~aioflow.Client.submit_many` batch is invalid (a value that
    cannot be serialised, a malformed run id, a ``run_ids`` list of the wrong length,
    too many items). Raised before anything is sent: no run of the batch was submitted.
    ``index`` is the position of the offending item (None when the batch as a whole is
    at fault). ``errors`` is the item's validation error list when its input did not
    match the flow's entry annotation (as :class:`InvalidInput`), else empty."""

    def __init__(
        self, message: str, *, index: int | None = None, errors: list[dict[str, Any]] | None = None
    ) -> None:
        self.index = index
        self.errors = errors or []
        super().__init__(message)


class BatchIncomplete(RedisUnavailable):
    """Redis failed part-way through a :meth:`~aioflow.Client.submit_many`.

    Each script call (one partition, up to 500 runs) is atomic, so every run of
    the batch is in one of two lists: ``submitted`` holds, in input order, the run
    ids Redis confirmed (created, or existing already); ``unknown`` maps the input
    index of every other item to the run id it was given, whose call failed or
    whose reply was lost, so it may or may not exist. Submitting those items again
    is safe when they carry caller-chosen ``run_ids`` (deduplicated); generated
    ids are not reused by a second call.
    """

    def __init__(self, message: str, *, submitted: list[str], unknown: dict[int, str]) -> None:
        self.submitted = submitted
        self.unknown = unknown
        super().__init__(message)
