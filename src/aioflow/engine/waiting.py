"""Waiting for runs to end: the :class:`Waiter` that listens for completions,
reading a finished run's :class:`Outcome`, and turning an outcome into the
run's result or the exception it stands for."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from aioflow.core import codec
from aioflow.core.aio import cancel_and_wait
from aioflow.core.errors import (
    RedisUnavailable,
    ResultTimeout,
    RunFailed,
    RunNotFound,
    RunStopped,
)
from aioflow.definitions.status import Status
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.outage import REDIS_ERRORS
from aioflow.store.topology import Conn, RedisClient, Router, Subscriptions


@dataclass(frozen=True)
class Outcome:
    """How a run ended: its status and the stored result (completed) or error JSON (failed)."""

    status: Status
    payload: bytes


class Waiter:
    """Waits for runs to finish with no lost wake-up.

    One pub/sub connection subscribes to each partition's ``done`` channel once;
    a waiter registers its future *after* the subscription is confirmed and
    *before* it checks the run's status, so a completion can land in neither gap.
    After a reconnect every pending wait is checked again.
    """

    def __init__(self, redis: RedisClient, fast: Conn) -> None:
        self._redis = redis
        self._fast = fast
        # the lean subscriber where possible: redis-py's pub/sub costs ~100 us a message
        self._sub = Subscriptions(fast, self._on_event) if isinstance(fast, Router) else None
        self._ps = redis.pubsub() if self._sub is None else None
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._seen: dict[str, int] = {}
        self._waits: dict[tuple[str, str], list[asyncio.Future[Outcome]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._rechecks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        if self._sub is not None:
            await self._sub.aclose()
        if self._task is not None:
            await cancel_and_wait([self._task])
            with contextlib.suppress(asyncio.CancelledError, *REDIS_ERRORS):
                await self._task
        if self._ps is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._ps.aclose()

    async def subscribe(self, channel: str) -> None:
        fut = self._confirmed.get(channel)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._confirmed[channel] = fut
            try:
                if self._sub is not None:
                    await self._sub.subscribe(channel)
                else:
                    assert self._ps is not None
                    await self._ps.subscribe(channel)
                    if self._task is None:
                        self._task = asyncio.create_task(self._read(), name="aioflow-waiter")
            except BaseException:
                del self._confirmed[channel]
                raise
        if not fut.done():
            timeout = self._fast.timeout
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(fut)
            except TimeoutError:
                raise RedisUnavailable(
                    f"Redis did not confirm the subscription in {timeout:g} s"
                ) from None

    def register(self, rid: RunId) -> asyncio.Future[Outcome]:
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waits.setdefault((keys.done_channel(rid.flow, rid.partition), rid.key), []).append(
            fut
        )
        return fut

    def unregister(self, rid: RunId, fut: asyncio.Future[Outcome]) -> None:
        k = (keys.done_channel(rid.flow, rid.partition), rid.key)
        futs = self._waits.get(k)
        if futs is not None:
            with contextlib.suppress(ValueError):
                futs.remove(fut)
            if not futs:
                del self._waits[k]

    def _resolve(self, channel: str, key: str, outcome: Outcome) -> None:
        for fut in self._waits.pop((channel, key), []):
            if not fut.done():
                fut.set_result(outcome)

    async def _read(self) -> None:
        assert self._ps is not None
        backoff = 0.05
        while not self._closed:
            try:
                msg = await self._ps.get_message(timeout=1.0)
                backoff = 0.05
            except REDIS_ERRORS:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if msg is not None:
                self._on_event(msg["type"], msg["channel"], msg["data"])

    def _on_event(self, kind: bytes | str, channel_raw: bytes, data: Any) -> None:
        channel = channel_raw.decode()
        if kind in (b"message", "message", b"smessage", "smessage"):
            key, status, payload = data.split(b"\n", 2)
            self._resolve(channel, key.decode(), Outcome(Status(status.decode()), payload))
        elif kind in (b"subscribe", "subscribe", b"ssubscribe", "ssubscribe"):
            fut = self._confirmed.get(channel)
            if fut is not None and not fut.done():
                fut.set_result(None)
            self._seen[channel] = self._seen.get(channel, 0) + 1
            if self._seen[channel] > 1:  # a re-subscription after a reconnect
                task = asyncio.create_task(self._recheck(channel))
                self._rechecks.add(task)
                task.add_done_callback(self._rechecks.discard)
        elif kind == b"down":
            # no connection to the channel's node for longer than the Redis timeout
            # (conn.Subscriber): a wait on it could last forever, so it fails now
            err = RedisUnavailable(f"lost the subscription to Redis ({channel}); retry")
            for ch, key in [k for k in self._waits if k[0] == channel]:
                for waiting in self._waits.pop((ch, key), []):
                    if not waiting.done():
                        waiting.set_exception(err)

    async def _recheck(self, channel: str) -> None:
        for ch, key in list(self._waits):
            if ch != channel:
                continue
            flow, part = ch[4:].split("}")[0].split(":")
            try:
                outcome = await fetch_outcome(self._fast, RunId(flow, int(part), key))
            except REDIS_ERRORS:
                continue
            except RunNotFound as e:
                # after a failover: the run's submit was lost with the old master
                for fut in self._waits.pop((ch, key), []):
                    if not fut.done():
                        fut.set_exception(e)
                continue
            if outcome is not None:
                self._resolve(ch, key, outcome)


async def fetch_outcome(fast: Conn, rid: RunId) -> Outcome | None:
    """The outcome of a finished run, None while it runs; raises RunNotFound."""
    vals: Any = await fast.execute("HMGET", rid.run, "status", "result", "err", idempotent=True)
    status, result, err = vals
    if status is None:
        raise RunNotFound(f"run {rid} not found (it never existed or it expired)")
    st = Status(status.decode())
    if not st.finished:
        return None
    return Outcome(st, result if st is Status.COMPLETED else (err or b""))


async def settle(
    fast: Conn, rid: RunId, fut: asyncio.Future[Outcome], timeout: float | None
) -> Outcome | None:
    """The outcome ``fut`` (registered with a :class:`Waiter`) brings, with the result
    read when it was too large for the notification; None if ``timeout`` passes first."""
    if timeout is None:  # the common case: no timer to arm (a wait per run)
        outcome = await fut
    else:
        try:
            async with asyncio.timeout(timeout):
                outcome = await fut
        except TimeoutError:
            return None
    if outcome.status is Status.COMPLETED and not outcome.payload:
        # too large to travel in the notification: read it
        outcome = await fetch_outcome(fast, rid) or outcome
    return outcome


def unwrap(rid: RunId | str, outcome: Outcome | None) -> Any:
    """The result of an outcome, or the exception it stands for."""
    if outcome is None:
        raise ResultTimeout(f"run {rid} did not finish in time")
    if outcome.status is Status.COMPLETED:
        return codec.decode(outcome.payload)
    if outcome.status is Status.STOPPED:
        raise RunStopped(str(rid))
    err = codec.loads(outcome.payload) if outcome.payload else {}
    raise RunFailed.from_error(str(rid), err)
