"""Running one claimed vertex message.

The :class:`Executor` builds the vertex's input, calls the node function (in
a thread for plain ``def``), opens or closes a subdag/branch/foreach scope, runs
a finished run's flow hooks and callback (:mod:`.callbacks`), applies the retry
policy (:mod:`.retries`) and ``on_failure``, and hands the resulting completion
record to the worker, which applies records in batches.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aioflow.core import codec
from aioflow.core.errors import LimitExceeded, NodeTimeout
from aioflow.core.settings import Settings
from aioflow.definitions.model import is_async, takes_ctx
from aioflow.definitions.plan import GROUPS, PNode, parent_group
from aioflow.definitions.waits import WAITS
from aioflow.observability import tracing
from aioflow.observability.metrics import outcome
from aioflow.store import keys
from aioflow.store.topology import Backend

from .callbacks import RunEnd
from .context import Context, RunStore
from .groups import close_group, open_group
from .message import Msg as Msg  # where the other parts import it from
from .retries import error_record, log_retry, retry_delay
from .waits import Waiting

log = logging.getLogger("aioflow.worker")


RETRIED = ("node", *WAITS)  # the vertex kinds whose failures are retried
FINAL = PNode("$final", "final", None, (), ())


def marker(m: Msg) -> str:
    """The run field whose presence means this message's work is done."""
    if m.kind == "n" and m.node.kind in GROUPS:
        return f"gn:{m.addr}"
    return f"o:{m.addr}"


@dataclass(slots=True)
class _Fn:
    is_async: bool
    wants_ctx: bool


def _inspect_fn(fn: Callable[..., Any]) -> _Fn:
    return _Fn(is_async(fn), takes_ctx(fn))  # the rule the definition was checked by


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class Executor:
    """Runs claimed messages; ``queue(m, ops, **record)`` receives each outcome."""

    def __init__(
        self,
        backend: Backend,
        *,
        clock: Callable[[], float],
        threads: ThreadPoolExecutor,
        tracing: bool,
        queue: Callable[..., None],
        note_due: Callable[[float], None],
        settings: Settings | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings = settings or Settings()
        self.clock = clock
        self.tracing = tracing
        self._threads = threads
        self._queue = queue
        self._note_due = note_due
        self._fns: dict[int, _Fn] = {}
        self._run_end = RunEnd(settings, clock, backend)
        self.waits = Waiting(self)

    async def aclose(self) -> None:
        await self._run_end.aclose()
        await self.waits.aclose()

    def run(self, m: Msg) -> Any:
        """The coroutine that runs ``m`` (inside a span when tracing)."""
        return self._traced(m) if self.tracing else self._execute(m)

    def fetch_fields(self, m: Msg) -> list[str]:
        node = m.node
        fields: list[str] = []
        if m.kind == "f":
            m.wants_ctx = True
            return ["status", "err", "result", "cbu", "opts", *(["tp"] if self.tracing else [])]
        if node.kind in WAITS:
            return self.waits.fetch_fields(m)
        if m.kind == "c":
            fields.append(f"gk:{m.addr}")
        elif node.parents and not (node.single_input and m.data is not None):
            fields.extend(f"o:{m.scope}{p}" for p, _ in node.data_in)
        if node.vertex is not None and node.vertex.fn is not None:
            fi = self._fn_info(node.vertex.fn)
            m.wants_ctx = fi.wants_ctx or node.vertex.on_failure is not None
        else:
            m.wants_ctx = False
        if m.wants_ctx:
            fields.append("opts")
        if self.tracing:
            fields.append("tp")
        return fields

    def _fn_info(self, fn: Callable[..., Any]) -> _Fn:
        info = self._fns.get(id(fn))
        if info is None:
            info = self._fns[id(fn)] = _inspect_fn(fn)
        return info

    # -- executing --------------------------------------------------------------------

    def _input(self, m: Msg) -> Any:
        node = m.node
        if not node.parents:
            return codec.decode(m.data) if m.data is not None else None
        if not node.data_in:
            return None
        if node.single_input:
            parent, fwd = node.data_in[0]
            raw = m.data if m.data is not None else m.fetched[0]
            value = codec.decode(raw) if raw is not None else None
            return fwd(value) if fwd is not None else value
        values = {}
        for (parent, fwd), raw in zip(node.data_in, m.fetched, strict=False):
            value = codec.decode(raw) if raw is not None else None
            values[parent] = fwd(value) if fwd is not None else value
        return values

    def _context(self, m: Msg) -> Context:
        opts = m.fetched[-1] if m.wants_ctx else None
        rid = m.rid
        return Context(
            run_id=str(rid),
            flow=m.flow.name,
            vertex=m.addr,
            attempt=m.attempt,
            options=codec.loads(opts) if opts else {},
            store=RunStore(self.backend.fast, rid.run),
        )

    async def _call(self, m: Msg, data: Any) -> Any:
        v = m.node.vertex
        assert v is not None and v.fn is not None
        fi = self._fn_info(v.fn)
        args = (data, self._context(m)) if fi.wants_ctx else (data,)
        if fi.is_async:
            coro = v.fn(*args)
        else:
            loop = asyncio.get_running_loop()
            coro = loop.run_in_executor(self._threads, lambda: v.fn(*args))  # type: ignore[misc]
        if v.timeout is None:
            return await coro
        deadline = asyncio.timeout(v.timeout)
        try:
            async with deadline:
                out = await coro
        except TimeoutError:
            if not deadline.expired():
                raise  # the node's own TimeoutError, not ours
        else:
            # returned after its timeout too: the cancel was lost (Python 3.11 loses one
            # inside asyncio.wait_for, as redis-py's commands use it) or swallowed
            if not deadline.expired():
                return out
        raise NodeTimeout(f"node {m.addr!r} timed out after {v.timeout:g}s") from None

    async def _traced(self, m: Msg) -> None:
        with tracing.vertex_span(m.trace, m.flow.name, str(m.rid), m.addr, m.attempt) as span:
            try:
                await self._execute(m)
            finally:
                tracing.set_outcome(span, outcome(m.vstatus, m.timed_out))

    async def _execute(self, m: Msg) -> None:
        data: Any = None
        try:
            if m.kind == "f":
                await self._final(m)
                return
            if m.kind == "c":
                ops = await close_group(self, m)
                self._queue(m, ops[1], value=ops[0])
                return
            if m.node.kind in WAITS:
                await self.waits.execute(m)
                return
            data = self._input(m)
            node = m.node
            vertex = node.vertex
            if node.kind == "collect":
                out = data
            elif node.kind == "node":
                if vertex is not None and vertex.aggregate is not None:
                    data = await _maybe_await(vertex.aggregate(data))
                typed = node.types  # annotated: convert in and out (definitions.types)
                out = await self._call(m, data if typed is None else typed.load(data))
                out = out if typed is None else typed.dump(out)
            else:
                await open_group(self, m, data)
                return
            value = self._encode(m, out)
            self._queue(m, self._success_ops(m, value), value=value)
        except asyncio.CancelledError as e:
            if m.cancelled == "stop":
                # stopped run: ack the message, nothing else
                self._queue(m, [], mode="r", vstatus="stopped")
                raise
            if m.cancelled in ("drain", "lease_lost"):
                # handed back by _drain; or another worker owns the message now
                raise
            # raised by the node itself: an ordinary failure
            await self._failed(m, e, data)
        except Exception as e:
            await self._failed(m, e, data)

    def _encode(self, m: Msg, out: Any, what: str = "output") -> bytes:
        value = codec.encode(out)
        if len(value) > self.settings.max_value:
            raise LimitExceeded(
                f"{what} of vertex {m.addr!r} is {len(value)} bytes, "
                f"larger than max_value={self.settings.max_value}"
            )
        return value

    def _success_ops(self, m: Msg, value: bytes) -> list[Any]:
        ops: list[Any] = []
        for c in m.node.children:
            addr = m.scope + c.name
            if c.indegree == 1:
                ops += ["E", addr, "n", value if c.inline else b""]
            else:
                ops += ["J", addr, "n", c.indegree]
        if m.plan.exit == m.node.name:
            if m.scope:
                ops += ["G", parent_group(m.scope), "", ""]
            else:
                ops += ["F", "", "", ""]
        return ops

    async def _final(self, m: Msg) -> None:
        """After a run ended: the flow's on_failure and finally_ hooks, then the callback."""
        ops = await self._run_end.ops(m.flow, m.fetched, self._context(m))
        self._queue(m, ops, value=b"1")

    async def _failed(self, m: Msg, error: BaseException, data: Any) -> None:
        m.timed_out = isinstance(error, NodeTimeout)
        vertex = m.node.vertex
        if vertex is not None and vertex.kind in RETRIED:
            delay = retry_delay(vertex.retry, error, m.attempt)
            if delay is not None:
                due = self.clock() + delay
                log_retry(m.flow.name, m.rid, m.addr, m.attempt, error, delay)
                kind = "n" if m.kind in "et" else m.kind  # a resolution's retry starts again
                member = keys.delayed_member(m.uid, m.addr, kind, m.id.decode(), m.data)
                self._queue(m, ["D", int(due * 1000), member, ""], mode="r", vstatus="retrying")
                self._note_due(due)
                if self.tracing:
                    tracing.retried(error, m.attempt, delay)
                return
            if vertex.on_failure is not None:
                try:
                    out = await _maybe_await(vertex.on_failure(error, data, self._context(m)))
                    typed = m.node.types  # the replacement output is the node's output
                    value = self._encode(m, out if typed is None else typed.dump(out))
                    self._queue(m, self._success_ops(m, value), value=value)
                    return
                except Exception as hook_error:
                    log.warning(
                        "on_failure of vertex %s of run %s raised %r", m.addr, m.rid, hook_error
                    )
        if self.tracing:
            tracing.mark_error(error)
        err = error_record(m.addr, error, m.attempt)
        self._queue(m, ["X", err, "", ""], mode="r", vstatus="failed")

    def handback_ops(self, m: Msg) -> list[Any]:
        # not counted against retries: the attempt counter goes back (a group's close
        # never counted one)
        if m.kind in ("e", "t"):
            return self.waits.handback_ops(m)
        ops: list[Any] = ["E", m.addr, m.kind, m.data or b""]
        if m.kind != "c":
            ops += ["S", f"a:{m.addr}", max(0, m.attempt - 1), ""]
        return ops
