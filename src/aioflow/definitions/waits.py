"""Vertices that wait on the world: ``wait`` (an event or a signal), ``sleep`` (a
time) and ``call`` (a child run). What each is given is checked here, when the
dag is built, and kept in a frozen spec on its :class:`~aioflow.definitions.model.Vertex`;
:class:`WaitingVertices` holds the three builder methods :class:`~aioflow.Dag` has.

None of them holds a worker slot while it waits: see :mod:`aioflow.worker.waits`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeAlias

from aioflow.core import codec
from aioflow.core.errors import DefinitionError

from .checks import KEY_SHAPE, NODE_ON_FAILURE_SHAPE, check_hook, check_name
from .policy import RetryPolicy
from .types import VertexTypes, wait_types

# event names: a flow name's characters and dots (``kyc.reviewed``); the same rule as
# the key schema's (aioflow.store.keys.EVENT_NAME_RE), which must not be looser
EVENT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
WAITS = ("wait", "sleep", "call")
WaitKind: TypeAlias = Literal["wait", "sleep", "call"]

Ref: TypeAlias = "str | Callable[..., Any]"
After: TypeAlias = "Ref | Iterable[Ref] | None"

UntilFn: TypeAlias = Callable[[Any], "datetime | float | Awaitable[datetime | float]"]
UNTIL_SHAPE = "until(data) takes one positional parameter and returns a datetime or epoch seconds"


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing.MISSING  # ``default=`` not given: a timed-out wait fails


def check_event_name(name: object, where: str = "event") -> str:
    if not isinstance(name, str) or not EVENT_NAME_RE.fullmatch(name):
        raise DefinitionError(
            f"{where}: invalid event name {name!r}: use 1-64 characters of lowercase letters, "
            "digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def event_names(on_event: str | Iterable[str] | None, flow: str) -> tuple[str, ...]:
    """``Flow(on_event=...)`` as a tuple of checked, distinct names."""
    if on_event is None:
        return ()
    names = [on_event] if isinstance(on_event, str) else list(on_event)
    where = f"flow {flow!r}: on_event"
    for n in names:
        check_event_name(n, where)
    if len(set(names)) != len(names):
        raise DefinitionError(f"{where} names an event twice: {names}")
    return tuple(names)


@dataclass(frozen=True, eq=False)
class WaitSpec:
    """A wait: ``event`` (may be None: signals only), ``key(data)`` (None: key ""),
    ``timeout`` seconds (None: none), ``default`` encoded (None: a timeout fails),
    ``since``: events kept since the run was created count, or only those sent once
    the vertex started."""

    event: str | None
    key: Callable[[Any], Any] | None
    timeout: float | None
    default: bytes | None
    since: Literal["run", "vertex"]
    data: VertexTypes | None = None  # data_type=: what the event's or signal's data must be


@dataclass(frozen=True, eq=False)
class SleepSpec:
    """A sleep of ``seconds``, or until ``until(data)`` (a datetime or epoch seconds)."""

    seconds: float | None
    until: UntilFn | None


@dataclass(frozen=True, eq=False)
class CallSpec:
    """A child run of ``flow`` (a :class:`~aioflow.Flow`)."""

    flow: Any


Spec: TypeAlias = "WaitSpec | SleepSpec | CallSpec"


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e10:
        raise DefinitionError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


def _retry(where: str, retries: int | RetryPolicy | None) -> RetryPolicy:
    if isinstance(retries, RetryPolicy):
        return retries
    if retries is None:
        return RetryPolicy()
    if isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0:
        return RetryPolicy(retries=retries)
    raise DefinitionError(f"{where}: retries must be an int >= 0 or a RetryPolicy")


def wait_spec(
    where: str,
    event: str | None,
    key: Callable[[Any], Any] | None,
    timeout: float | None,
    default: Any,
    since: str,
    data_type: Any = None,
) -> WaitSpec:
    if event is not None:
        check_event_name(event, where)
    if key is not None:
        if event is None:
            raise DefinitionError(f"{where}: key= needs an event=")
        check_hook(key, f"{where}: key", KEY_SHAPE)
    if since not in ("run", "vertex"):
        raise DefinitionError(f"{where}: since must be 'run' or 'vertex', got {since!r}")
    seconds = None if timeout is None else _seconds(timeout, f"{where}: timeout")
    encoded = None
    if default is not MISSING:
        if seconds is None:
            raise DefinitionError(
                f"{where}: default= is the output of a timed-out wait: give a timeout="
            )
        try:
            encoded = codec.encode(default)
        except Exception as e:
            raise DefinitionError(f"{where}: default cannot be stored: {e}") from None
    data = wait_types(where, data_type)
    return WaitSpec(event, key, seconds, encoded, since, data)  # type: ignore[arg-type]


def sleep_spec(where: str, seconds: float | None, until: UntilFn | None) -> SleepSpec:
    if (seconds is None) == (until is None):
        raise DefinitionError(f"{where}: give seconds= or until=, not both")
    if until is not None:
        check_hook(until, f"{where}: until", UNTIL_SHAPE)
        return SleepSpec(None, until)
    return SleepSpec(_seconds(seconds, f"{where}: seconds"), None)


def describe_spec(spec: Spec) -> dict[str, Any]:
    """What a version covers of a waiting vertex (its item of ``describe()``)."""
    if isinstance(spec, WaitSpec):
        return {
            "wait": {
                "event": spec.event,
                "key": spec.key is not None,
                "timeout": spec.timeout,
                "default": spec.default is not None,
                "since": spec.since,
                **({} if spec.data is None else {"data_schema": spec.data.input_schema()}),
            }
        }
    if isinstance(spec, SleepSpec):
        return {"sleep": {"seconds": spec.seconds, "until": spec.until is not None}}
    return {"call": {"flow": spec.flow.name}}


class WaitingVertices:
    """The builder methods of waiting vertices, mixed into :class:`~aioflow.Dag`."""

    def _label(self) -> str:
        raise NotImplementedError

    def _add_waiting(
        self,
        name: str,
        kind: WaitKind,
        spec: Spec,
        after: After,
        retry: RetryPolicy | None = None,
        on_failure: Callable[..., Any] | None = None,
    ) -> str:
        raise NotImplementedError

    def _failure(
        self, where: str, retries: int | RetryPolicy | None, on_failure: Callable[..., Any] | None
    ) -> RetryPolicy:
        if on_failure is not None:
            check_hook(on_failure, f"{where}: on_failure", NODE_ON_FAILURE_SHAPE, nargs=3)
        return _retry(where, retries)

    def wait(
        self,
        name: str,
        *,
        event: str | None = None,
        key: Callable[[Any], Any] | None = None,
        timeout: float | None = None,
        default: Any = MISSING,
        since: Literal["run", "vertex"] = "run",
        data_type: Any = None,
        after: After = None,
        retries: int | RetryPolicy | None = None,
        on_failure: Callable[..., Any] | None = None,
    ) -> str:
        """A vertex that waits, holding no worker slot, for the event ``event`` whose
        key is ``key(data)`` (sync or async; no ``key``: the key ``""``), or for a
        signal to this vertex (``client.signal(run_id, name, data)``); its output is
        the event's or signal's data (``data_type``: converted into that type, as a
        node's annotated input is; data that does not convert is refused at the door,
        where the sender holds the flow, else fails the vertex with
        :class:`~aioflow.InvalidInput`). An event sent after the run was created counts
        even if it came before the run reached the wait (``since="vertex"``: only
        events sent once the vertex started). After ``timeout`` seconds the vertex
        fails with :class:`~aioflow.WaitTimeout` (``retries`` and ``on_failure``
        apply) unless ``default`` is given: then that is its output. Answers
        ``name``. Raises :class:`~aioflow.DefinitionError` for a bad name, event
        name, timeout or function."""
        check_name(name)
        where = f"{self._label()}: wait {name!r}"
        spec = wait_spec(where, event, key, timeout, default, since, data_type)
        return self._add_waiting(
            name, "wait", spec, after, self._failure(where, retries, on_failure), on_failure
        )

    def sleep(
        self,
        name: str,
        *,
        seconds: float | None = None,
        until: UntilFn | None = None,
        after: After = None,
    ) -> str:
        """A vertex that waits ``seconds``, or until ``until(data)`` (sync or async: a
        datetime, naive meaning UTC, or epoch seconds; a time passed goes on at
        once), holding no worker slot; its output is its input, passed through. The
        timer lives in Redis: it fires on any worker. Answers ``name``."""
        check_name(name)
        spec = sleep_spec(f"{self._label()}: sleep {name!r}", seconds, until)
        return self._add_waiting(name, "sleep", spec, after)

    def call(
        self,
        name: str,
        flow: Any,
        *,
        after: After = None,
        retries: int | RetryPolicy | None = None,
        on_failure: Callable[..., Any] | None = None,
    ) -> str:
        """A vertex that runs ``flow`` (a :class:`~aioflow.Flow`) as a child run on
        this vertex's input and waits for it, holding no worker slot; its output is
        the child's result. The child's run id derives from this run and vertex (a
        redelivery never starts a second child), it pins ``flow``'s version, and
        the states link parent and child. A child that fails or is stopped fails the
        vertex with :class:`~aioflow.ChildFailed` (``retries`` and ``on_failure``
        apply; a retry starts a new child); stopping or failing this run stops its
        children. Answers ``name``."""
        check_name(name)
        where = f"{self._label()}: call {name!r}"
        retry = self._failure(where, retries, on_failure)
        return self._add_waiting(name, "call", CallSpec(flow), after, retry, on_failure)
