"""Wait, sleep and call vertices in the worker: none holds a slot while it waits.

A vertex's start (its kind ``n`` message) registers what it waits on (the event's
waiter record, the child run), then queues a *waiting completion* (mode ``r``,
status ``waiting``) that acks the message, adds its timer to the partition's
delayed set (kind ``t``, data ``b"<attempt>\\n"`` + the message's data: any
worker's mover fires it, so a dead worker loses nothing) and records the deadline
(``dl:<addr>``). The slot is free at once. The vertex goes on with a *resolution
message* on its run's stream: ``e`` (an event's or signal's data, a child run's
outcome; :func:`aioflow.engine.steering.resolve_wait`) or ``t`` (its timer). The
claim lets one resolution through per attempt (``claim.lua``); its completion
stores the output like any vertex's.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from aioflow.core import codec
from aioflow.core.errors import ChildFailed, WaitTimeout
from aioflow.definitions.waits import CallSpec, SleepSpec, WaitSpec
from aioflow.engine import events
from aioflow.store import keys

from .calls import Calls, parse_outcome
from .message import ExecutorPart, Msg

log = logging.getLogger("aioflow.worker")


def split_timer(data: bytes | None) -> tuple[int, bytes | None]:
    """A timer message's data: the attempt it was set for, and the vertex's own data."""
    head, _, rest = (data or b"0\n").partition(b"\n")
    return int(head or 0), rest or None


def _epoch(when: Any) -> float:
    if isinstance(when, datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return float(when.timestamp())
    if isinstance(when, int | float) and not isinstance(when, bool):
        return float(when)
    raise TypeError(f"until must return a datetime or epoch seconds, got {type(when).__name__}")


async def _maybe_await(value: Any) -> Any:
    if hasattr(value, "__await__"):
        return await value
    return value


class Waiting:
    """Runs the messages of wait, sleep and call vertices for an :class:`Executor`."""

    def __init__(self, ex: ExecutorPart) -> None:
        self.ex = ex
        self.calls = Calls(ex.backend, ex.settings, ex.clock)

    async def aclose(self) -> None:
        await self.calls.aclose()

    @staticmethod
    def _prefix(m: Msg) -> list[str]:
        kind = m.node.kind
        if kind == "wait":
            return [f"sg:{m.addr}", "created"] if m.kind == "n" else [f"wk:{m.addr}"]
        if kind == "call" and m.kind == "e":
            return [f"wi:{m.addr}"]
        return []

    def fetch_fields(self, m: Msg) -> list[str]:
        """What the claim reads of the run for ``m``: the prefix of its kind, the
        parents' outputs when its input is needed, ``opts`` and the traceparent."""
        node = m.node
        fields = self._prefix(m)
        if node.kind == "wait" and m.kind == "e":
            pass  # its output is the message's data
        elif node.parents and (
            (node.kind == "call" and m.kind == "e")
            or not (node.single_input and m.data is not None)
        ):
            fields.extend(f"o:{m.scope}{p}" for p, _ in node.data_in)
        m.wants_ctx = True
        fields.append("opts")
        if self.ex.tracing:
            fields.append("tp")
        return fields

    def handback_ops(self, m: Msg) -> list[Any]:
        """A resolution handed back by a draining worker: enqueued again as it came
        (the attempt is unchanged), the gate it passed opened for its copy."""
        data = m.data or b""
        if m.kind == "t":
            data = f"{m.attempt}\n".encode() + data
        return ["E", m.addr, m.kind, data, "S", f"wr:{m.addr}", "", ""]

    async def execute(self, m: Msg) -> None:
        n = len(self._prefix(m))
        pre, m.fetched = m.fetched[:n], m.fetched[n:]
        data: Any = None
        try:
            kind = m.node.kind
            if m.kind == "e" and kind == "call":
                outcome, m.data = m.data, pre[0]  # the call's own input, for a retry
                data = self.ex._input(m)
                self._child_ended(m, outcome)
            elif m.kind == "e":
                self._done(m, m.data or codec.ENCODED_NONE)
                await self._forget(m, pre[0])
            elif m.kind == "t":
                data = self.ex._input(m)
                await self._timer(m, data, pre)
            else:
                data = self.ex._input(m)
                if kind == "wait":
                    await self._wait(m, data, pre)
                elif kind == "sleep":
                    await self._sleep(m, data)
                else:
                    await self._call(m, data)
        except Exception as e:
            await self.ex._failed(m, e, data)

    def _done(self, m: Msg, value: bytes) -> None:
        spec = m.node.vertex.spec if m.node.vertex else None
        if isinstance(spec, WaitSpec) and spec.data is not None:
            # data_type=: the data converted (InvalidInput when it does not) and stored
            # as the type's dump, as a node's annotated output is
            value = codec.encode(spec.data.dump(spec.data.load(codec.decode(value))))
        self.ex._queue(m, self.ex._success_ops(m, value), value=value)

    def _waiting(self, m: Msg, deadline: float | None, ops: list[Any]) -> None:
        if deadline is None:
            ops += ["S", f"dl:{m.addr}", "", ""]
        else:
            data = f"{m.attempt}\n".encode() + (m.data or b"")
            member = keys.delayed_member(m.uid, m.addr, "t", f"t{m.attempt}", data)
            ops += ["D", int(deadline * 1000), member, "", "S", f"dl:{m.addr}", repr(deadline), ""]
            self.ex._note_due(deadline)
        self.ex._queue(m, ops, mode="r", vstatus="waiting")

    # -- wait --------------------------------------------------------------------------

    async def _wait(self, m: Msg, data: Any, pre: list[bytes | None]) -> None:
        spec = m.node.vertex.spec if m.node.vertex else None
        assert isinstance(spec, WaitSpec)
        signalled, created = pre
        if signalled is not None:  # a signal came before the wait started
            self._done(m, signalled)
            return
        now = self.ex.clock()
        deadline = now + spec.timeout if spec.timeout is not None else None
        ops: list[Any] = []
        if spec.event is not None:
            key = "" if spec.key is None else str(await _maybe_await(spec.key(data)))
            since = float(created) if spec.since == "run" and created else now
            hit = await events.register_wait(
                self.ex.backend.fast,
                spec.event,
                key,
                keys.waiter_ref(m.stream, m.uid, m.addr),
                int(deadline * 1000) if deadline is not None else 0,
                int(since * 1000),
                now_ms=int(now * 1000),
                ttl_ms=int(self.ex.settings.event_ttl * 1000),
            )
            if hit is not None:  # sent before the wait registered: it counts
                self._done(m, hit[1])
                return
            ops += ["S", f"wk:{m.addr}", key, ""]
        self._waiting(m, deadline, ops)

    async def _forget(self, m: Msg, key: bytes | None) -> None:
        spec = m.node.vertex.spec if m.node.vertex else None
        if not isinstance(spec, WaitSpec) or spec.event is None or key is None:
            return
        ref = keys.waiter_ref(m.stream, m.uid, m.addr)
        try:  # the record expires anyway; this only spares the event's senders a call
            await events.forget_wait(self.ex.backend.fast, spec.event, key.decode(), ref)
        except Exception as e:
            log.debug("forgetting waiter %r failed: %r", ref, e)

    async def _timer(self, m: Msg, data: Any, pre: list[bytes | None]) -> None:
        spec = m.node.vertex.spec if m.node.vertex else None
        if isinstance(spec, SleepSpec):
            self._done(m, self.ex._encode(m, data))
            return
        assert isinstance(spec, WaitSpec)
        await self._forget(m, pre[0])
        if spec.default is not None:
            self._done(m, spec.default)
            return
        what = f"event {spec.event!r}" if spec.event is not None else "a signal"
        raise WaitTimeout(f"wait {m.addr!r} timed out after {spec.timeout:g}s waiting for {what}")

    # -- sleep -------------------------------------------------------------------------

    async def _sleep(self, m: Msg, data: Any) -> None:
        spec = m.node.vertex.spec if m.node.vertex else None
        assert isinstance(spec, SleepSpec)
        now = self.ex.clock()
        if spec.seconds is not None:
            due = now + spec.seconds
        else:
            assert spec.until is not None
            due = _epoch(await _maybe_await(spec.until(data)))
        if due <= now:
            self._done(m, self.ex._encode(m, data))
            return
        self._waiting(m, due, [])

    # -- call --------------------------------------------------------------------------

    async def _call(self, m: Msg, data: Any) -> None:
        spec = m.node.vertex.spec if m.node.vertex else None
        assert isinstance(spec, CallSpec)
        await self.calls.start(m, spec.flow, data)
        self._waiting(m, None, [])

    def _child_ended(self, m: Msg, outcome: bytes | None) -> None:
        status, child, payload = parse_outcome(outcome or b"")
        if status == "completed":
            self._done(m, payload)
            return
        err = None
        if payload:
            with contextlib.suppress(Exception):
                err = codec.loads(payload)
        raise ChildFailed(child, status, err)
