"""Global concurrency limits and rate limits of vertices, across all workers.

Design
======

``@flow.node(concurrency=N, concurrency_key=fn)`` allows at most N executions of
the vertex at once per key (one key when ``concurrency_key`` is not given);
``@flow.node(rate="5/s", rate_key=fn)`` at most 5 starts a second per key. A
limit is named by (flow, vertex path, key): the vertex path is the vertex's
address with the foreach/branch keys taken out, so every item of a foreach
shares the limit of its inner vertex.

Where the state lives. Each limit has keys of its own hash tag,
``af:lim:{flow:vertex:key}`` and ``af:rate:{flow:vertex:key}`` (``lua/limit.lua``,
``lua/rate.lua``), so on Redis Cluster it lives in a slot of its own and acquiring
is an atomic step apart from the run's scripts. Nothing here needs the two
steps to be atomic together; each crash point is covered below.

Slots are leases. A slot is a member of the zset ``:h`` (holder -> expiry). The
holder is ``<run key>|<vertex address>``: the same for every delivery of that
vertex execution, so a redelivered message (reclaimed after a crash, handed back
on drain, moved back from waiting) re-acquires its own slot idempotently instead
of taking a second one. Every acquire and release first drops expired holders.
A worker renews the slots of its running nodes with its message leases
(``_extend_leases``), to ``visibility_timeout`` from now; it releases a slot once
the completion is applied. The slot records which message id took it last, and
a release names it: a release that lands late (the slot was released after a
rate wait or a failed attempt, and the vertex's next delivery re-took it
meanwhile) frees nothing. A SIGKILLed worker renews nothing, so its slots expire
within ``visibility_timeout``, which is also when its messages are reclaimed.

Order of a start, and its crash points. The claim script answers "go" (run
checks, attempt counted); then the worker calls ``acquire`` (atomic: drop expired,
take a free slot or register as waiter); then it starts the task.
- Crash after acquire, before the start: the message stays pending, is reclaimed
  after ``visibility_timeout``, and its holder is either still there (re-acquired
  at once) or expired (dropped). Nothing leaks for longer than the lease.
- A completion refused as fenced (the message was reclaimed by another worker)
  does not release the slot: the holder is shared with the new owner.

Waiting holds no worker slot and no delivery. When ``acquire`` finds no free
slot the worker parks the message through the ordinary completion script: ack
it, put it in the run's delayed set ``af:{flow:p}:z`` with a backstop due time,
set the attempt counter back (waiting is no attempt) and the vertex status to
``waiting``. Once that is applied it registers the holder in the waiting zset
``:w`` (``wait``: FIFO by arrival, a holder already waiting keeps its place) with
where the message sleeps; that step also hands it a slot freed meanwhile, so a
release between the failed acquire and the registration is not missed, and a
wake-up always finds the message where it says. Acked and re-added later, it
never counts against ``max_deliveries``. A release (or an acquire that finds
expired holders) hands each free slot to the oldest waiter: the slot is reserved for its holder and
the script answers where the waiter sleeps; the releasing worker moves that
member to due-now (``lua/wake.lua``, in the run's slot) and the mover puts it
back on its stream. When nobody will come for the reservation (the member is
gone: it came back by its backstop; its run is over; its run is paused, and the
message joins the run's parked ones for resume) it is released again at once,
to the next waiter.
- The backstop: a parked message comes back by itself after
  ``visibility_timeout`` (longer the further back it waits), finds its slot or
  waits again in its old place. That is what recovers a wake-up lost to a crash
  between the release and the wake, or slots left by dead workers when no
  live worker touches the limit any more. It is a bounded re-check, not a loop.
- Fairness between keys: each key has its own slots and waiters, and a waiting
  message leaves the stream at once, so one key's flood waits in its own list
  while the other keys' messages behind it in the stream are read and run.

Rate limits are token buckets (``lua/rate.lua``): capacity N tokens refilled at
N per period, shared by all workers. A start without a token takes one in
advance: the bucket goes into debt and the script answers when that token is
due, recorded for the holder ``<run key>|<address>|<attempt>``; the worker parks
the message in the run's delayed set until then (no slot held meanwhile), and
when it comes back the recorded token lets it go. So waiters are queued in time
rather than racing for each new token. A vertex with both limits takes its
concurrency slot first, then its token; waiting for a token gives the slot back.
Tokens are not returned: a crash after taking one only makes the rate lower.

Clock: scripts get the worker's clock (milliseconds), like the other scripts;
workers' clocks should agree to within the tolerance one needs from a rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioflow.core.settings import Settings
from aioflow.store import keys
from aioflow.store.scripts import SCRIPTS

if TYPE_CHECKING:
    from aioflow.store.topology import Conn

    from .vertex import Executor, Msg

log = logging.getLogger("aioflow.worker")

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.@:-]{1,64}$")
_SCOPE_KEYS = re.compile(r"\[[^\]]*\]")


def limit_tag(flow: str, scope: str, vertex: str, key: str | None) -> str:
    """``{flow:vertex path[:key]}``: the hash tag of one limit's keys."""
    path = _SCOPE_KEYS.sub("", scope) + vertex
    if key is None:
        return f"{{{flow}:{path}}}"
    if not _SAFE_KEY.fullmatch(key):
        key = "#" + hashlib.sha1(key.encode()).hexdigest()[:32]
    return f"{{{flow}:{path}:{key}}}"


async def _key(fn: Callable[[Any], Any], data: Any) -> str:
    k = fn(data)
    if inspect.isawaitable(k):
        k = await k
    return str(k)


class Limits:
    """The worker's side of limits: admit claimed messages, renew and release slots."""

    def __init__(
        self,
        conn: Conn,
        executor: Executor,
        *,
        settings: Settings,
        clock: Callable[[], float],
        queue: Callable[..., None],
        note_due: Callable[[float], None],
    ) -> None:
        self.conn = conn
        self.executor = executor
        self.clock = clock
        self.vt = settings.visibility_timeout
        self.lease_ms = int(self.vt * 1000)
        self._queue = queue
        self._note_due = note_due
        # keyed by (stream, message id): ids repeat across the streams of partitions
        self._held: dict[tuple[str, bytes], tuple[str, str, int]] = {}  # key, holder, N
        self._releases: dict[tuple[str, int], list[str | bytes]] = {}
        self._parked: dict[tuple[str, bytes], tuple[str, str, int, bytes]] = {}  # + where
        self._waits: list[tuple[str, str, int, bytes]] = []
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def applies(m: Msg) -> bool:
        v = m.node.vertex
        return (
            m.kind == "n"
            and v is not None
            and v.kind == "node"
            and (v.concurrency is not None or v.rate is not None)
        )

    async def admit(self, msgs: list[Msg]) -> list[Msg]:
        """The messages that may start now; the others are parked until they may."""
        ok = await asyncio.gather(*(self._admit(m) for m in msgs))
        return [m for m, go in zip(msgs, ok, strict=True) if go]

    async def _admit(self, m: Msg) -> bool:
        v = m.node.vertex
        assert v is not None
        data: Any = None
        try:
            if v.concurrency_key is not None or v.rate_key is not None:
                data = self.executor._input(m)
                if v.aggregate is not None:
                    data = v.aggregate(data)
                    if inspect.isawaitable(data):
                        data = await data
            ckey = await _key(v.concurrency_key, data) if v.concurrency_key else None
            rkey = await _key(v.rate_key, data) if v.rate_key else None
        except Exception as e:
            # a key function that raises fails the vertex like its node would
            await self.executor._failed(m, e, data)
            return False
        holder = f"{m.uid}|{m.addr}"
        tag = limit_tag(m.flow.name, m.scope, m.node.name, ckey)
        try:
            if v.concurrency is not None:
                if not await self._acquire(m, f"af:lim:{tag}", holder, v.concurrency):
                    return False
            if v.rate is not None:
                rtag = limit_tag(m.flow.name, m.scope, m.node.name, rkey)
                now = self.clock()
                wait_ms = await SCRIPTS.call(
                    self.conn,
                    "rate",
                    f"af:rate:{rtag}",
                    int(now * 1000),
                    repr(v.rate.per_ms),
                    v.rate.count,
                    f"{holder}|{m.attempt}",
                )
                if int(wait_ms) > 0:
                    self.done(m)  # no slot held while waiting for the token
                    due = now + int(wait_ms) / 1000
                    self._park(m, due, f"t{m.id.decode()}")
                    self._note_due(due)
                    return False
        except Exception as e:
            # left pending: reclaimed after visibility_timeout; a slot taken meanwhile is
            # found again by the redelivery (same holder) or expires
            log.warning(
                "limit check of vertex %s of run %s failed (%s): left for redelivery",
                m.addr,
                m.rid,
                e,
            )
            self._held.pop((m.stream, m.id), None)
            return False
        return True

    async def _acquire(self, m: Msg, key: str, holder: str, limit: int) -> bool:
        now = self.clock()
        where = (
            keys.stream_tag(m.stream).encode()
            + b":z\n"
            + keys.delayed_member(m.uid, m.addr, m.kind, f"w{m.id.decode()}", m.data)
        )
        res = await SCRIPTS.call(
            self.conn,
            "limit",
            key,
            "acquire",
            int(now * 1000),
            self.lease_ms,
            limit,
            holder,
            where,
            m.id,
        )
        await self._wake(key, limit, res[-1])
        if res[0] == b"go":
            self._held[(m.stream, m.id)] = (key, holder, limit)
            return True
        # further back waiters re-check less often: a release wakes them anyway
        backstop = now + self.vt * (1 + min(9, int(res[1]) // limit))
        self._parked[(m.stream, m.id)] = (key, holder, limit, where)  # a waiter once parked
        self._park(m, backstop, f"w{m.id.decode()}")
        return False

    def _park(self, m: Msg, due: float, nonce: str) -> None:
        # waiting is not an attempt: the counter the claim raised goes back
        attempt = max(0, m.attempt - 1)
        ops = [
            "D",
            int(due * 1000),
            keys.delayed_member(m.uid, m.addr, m.kind, nonce, m.data),
            "",
            "S",
            f"a:{m.addr}",
            attempt,
            "",
        ]
        self._queue(m, ops, mode="r", vstatus="waiting")

    async def _wake(self, key: str, limit: int, woken: list[bytes]) -> None:
        """Move waiters given a slot to due-now; reservations nobody takes go back."""
        while woken:
            now_ms = int(self.clock() * 1000)
            pairs = list(zip(woken[::2], woken[1::2], strict=True))
            found = await asyncio.gather(*(self._due_now(where, now_ms) for _, where in pairs))
            self._note_due(now_ms / 1000)
            stale = [h for (h, _), n in zip(pairs, found, strict=True) if not n]
            if not stale:
                return
            woken = await SCRIPTS.call(
                self.conn, "limit", key, "unreserve", now_ms, self.lease_ms, limit, *stale
            )

    async def _due_now(self, where: bytes, now_ms: int) -> Any:
        zset, _, mem = where.partition(b"\n")
        return await SCRIPTS.call(self.conn, "wake", zset.decode(), now_ms, mem)

    def done(self, m: Msg, *, fenced: bool = False) -> None:
        """``m`` finished here (its completion applied): release its slot, unless the
        completion was fenced (the message, and so the slot, went to another worker)."""
        parked = self._parked.pop((m.stream, m.id), None)
        if parked is not None and not fenced:
            self._waits.append(parked)
        held = self._held.pop((m.stream, m.id), None)
        if held is not None and not fenced:
            key, holder, limit = held
            self._releases.setdefault((key, limit), []).extend((holder, m.id))
        elif parked is None or fenced:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._release_all(), name="aioflow-limits")

    async def _release_all(self) -> None:
        while self._releases or self._waits:
            batch, self._releases = self._releases, {}
            waits, self._waits = self._waits, []
            try:
                await asyncio.gather(
                    *(self._release(k, n, hs) for (k, n), hs in batch.items()),
                    *(self._wait(*w) for w in waits),
                )
            except Exception as e:  # the slots expire within visibility_timeout
                log.warning("releasing limit slots failed (%s): they expire instead", e)

    async def _release(self, key: str, limit: int, holders: list[str | bytes]) -> None:
        now_ms = int(self.clock() * 1000)
        woken = await SCRIPTS.call(
            self.conn, "limit", key, "release", now_ms, self.lease_ms, limit, *holders
        )
        await self._wake(key, limit, woken)

    async def _wait(self, key: str, holder: str, limit: int, where: bytes) -> None:
        now_ms = int(self.clock() * 1000)
        woken = await SCRIPTS.call(
            self.conn, "limit", key, "wait", now_ms, self.lease_ms, limit, holder, where
        )
        await self._wake(key, limit, woken)

    async def renew(self) -> None:
        """Extend the leases of the slots of running nodes (with the message leases)."""
        by_key: dict[tuple[str, int], list[str]] = {}
        for key, holder, limit in self._held.values():
            by_key.setdefault((key, limit), []).append(holder)
        now_ms = int(self.clock() * 1000)
        for (key, limit), holders in by_key.items():
            try:
                woken = await SCRIPTS.call(
                    self.conn, "limit", key, "renew", now_ms, self.lease_ms, limit, *holders
                )
                await self._wake(key, limit, woken)
            except Exception as e:  # the message leases are renewed all the same
                log.warning("renewing limit slots of %s failed (%s)", key, e)

    async def flush(self) -> None:
        """Wait for releases in progress (a draining worker gives its slots back)."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
