"""A lean Redis connection for the hot path.

redis-py spends most of a round trip in its own machinery (pool checkout,
argument wrappers, per-command packing): profiled at 60-130 us per command
here against ~12 us for the protocol itself. The per-vertex path (submit,
claim, complete, read) therefore goes through this connection: one socket,
commands packed by hiredis, replies matched to callers in order, so
concurrent callers pipeline for free. Everything else keeps using redis-py.

Errors use redis-py's classes (``ConnectionError``, ``ResponseError``,
``NoScriptError``) so callers handle both paths alike. A dropped connection
fails the calls in flight and is re-opened by the next call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from ssl import SSLContext
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, NoScriptError, OutOfMemoryError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from aioflow.core.aio import cancel_and_wait

from .endpoint import Endpoint, keepalive, open_transport

log = logging.getLogger("aioflow.conn")


class NotConnected(RedisConnectionError):
    """The connection could not be opened: the command was never sent."""


def _pack(*args: Any) -> bytes:
    packed: bytes = hiredis.pack_command(args)
    return packed


_PING = _pack("PING")


class Stalled(RedisConnectionError):
    """Redis did not answer within the connection's deadline, so the connection was
    closed: a link that stalled without a reset (a partition, a stuck NAT or load
    balancer, a server that froze). The command may or may not have been applied."""


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        # the time by which each waiter's reply is due (replies come in order, so only
        # the oldest one's is watched: one timer per connection, not one per command)
        self.deadlines: collections.deque[float] = collections.deque()
        self.timeout = timeout
        self._watch: asyncio.TimerHandle | None = None
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport
        self.lost: Exception | None = None
        # kept: asyncio.get_running_loop() costs a getpid() syscall per call
        self.loop = asyncio.get_running_loop()
        self.out: list[bytes] | None = None  # while a pass batches: what it sends next

    def expect(self, futs: list[asyncio.Future[Any]], timeout: float | None) -> None:
        """Wait for one reply per future, each due within ``timeout`` (default: the
        connection's); a reply that is late closes the connection."""
        due = self.loop.time() + (self.timeout if timeout is None else timeout)
        self.waiters.extend(futs)
        self.deadlines.extend([due] * len(futs))
        if self._watch is None:
            self._watch = self.loop.call_at(self.deadlines[0], self._check)

    def _check(self) -> None:
        self._watch = None
        if not self.deadlines or self.lost is not None:
            return
        due = self.deadlines[0]
        if due > self.loop.time():
            self._watch = self.loop.call_at(due, self._check)
            return
        self._fail(Stalled(f"Redis did not answer in time ({self.timeout:g} s): connection closed"))
        if self.transport is not None:
            self.transport.abort()

    def send(self, data: bytes) -> None:
        """Write ``data``: the first command of an event-loop pass at once (a lone
        caller waits for nothing), the ones after it in the same pass together in
        one write at its end, so concurrent callers share a syscall (and Redis a
        read) instead of one each."""
        if self.out is not None:
            self.out.append(data)
            return
        self.out = []
        self.loop.call_soon(self._flush)
        self.transport.write(data)

    def _flush(self) -> None:
        out, self.out = self.out, None
        if out and self.transport is not None and self.lost is None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            keepalive(sock)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            fut = self.waiters.popleft()
            self.deadlines.popleft()
            if not fut.done():
                fut.set_result(reply)

    def _fail(self, exc: Exception) -> None:
        if self.lost is None:
            self.lost = exc
        self.deadlines.clear()
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(self.lost)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by server'}"))


class Lean:
    """One lean connection; :meth:`execute` sends a command and returns the raw reply."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 5.0,
        timeout: float = 10.0,
        path: str | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        self.endpoint = Endpoint(
            host=host,
            port=port,
            path=path,
            ssl=ssl,
            username=username,
            password=password,
            db=db,
            connect_timeout=connect_timeout,
            timeout=timeout,
        )
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._proto: _Protocol | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_redis(cls, redis: Redis) -> Lean | None:
        """A lean connection to the same server as ``redis`` (TCP, TLS or a unix
        socket); None for a connection class it does not know."""
        ep = Endpoint.from_redis(redis)
        if ep is None:
            return None
        return cls(
            ep.host,
            ep.port,
            db=ep.db,
            username=ep.username,
            password=ep.password,
            connect_timeout=ep.connect_timeout,
            timeout=ep.timeout,
            path=ep.path,
            ssl=ep.ssl,
        )

    async def _open(self) -> _Protocol:
        async with self._lock:
            if self._proto is not None and self._proto.lost is None:
                return self._proto
            try:
                timeout = self.timeout
                _, proto = await open_transport(self.endpoint, lambda: _Protocol(timeout))
            except RedisConnectionError as e:
                raise NotConnected(str(e)) from e
            if self.password:
                auth = [self.username, self.password] if self.username else [self.password]
                await self._send(proto, "AUTH", *auth)
            if self.db:
                await self._send(proto, "SELECT", self.db)
            self._proto = proto
            return proto

    @staticmethod
    async def _send(proto: _Protocol, *args: Any, timeout: float | None = None) -> Any:
        if proto.lost is not None or proto.transport is None:
            raise proto.lost or RedisConnectionError("not connected")
        fut: asyncio.Future[Any] = proto.loop.create_future()
        proto.expect([fut], timeout)
        proto.send(_pack(*args))
        reply = await fut
        if isinstance(reply, ResponseError):
            text = str(reply)
            if text.startswith("NOSCRIPT"):
                raise NoScriptError(text)
            if text.startswith("LOADING"):  # restarting: a connection error, retried
                raise BusyLoadingError(text)
            if text.startswith("OOM"):  # as redis-py raises it
                raise OutOfMemoryError(text)
            raise reply
        return reply

    async def execute(self, *args: Any, timeout: float | None = None) -> Any:
        """Send one command and return its reply. It is due within ``timeout``
        seconds (default: the connection's; a blocking command gives its block plus
        a grace): else the connection is closed and :class:`Stalled` raised."""
        proto = self._proto
        if proto is None or proto.lost is not None:
            proto = await self._open()
        return await self._send(proto, *args, timeout=timeout)

    async def execute_many(
        self, commands: list[tuple[Any, ...]], *, raise_errors: bool = True
    ) -> list[Any]:
        """Send several commands in one write; their replies in order. The first
        error reply is raised once all have arrived, or with ``raise_errors=False``
        left in its place."""
        proto = self._proto
        if proto is None or proto.lost is not None:
            proto = await self._open()
        if proto.transport is None:
            raise proto.lost or RedisConnectionError("not connected")
        futs = [proto.loop.create_future() for _ in commands]
        proto.expect(futs, None)
        proto.send(b"".join(_pack(*c) for c in commands))
        try:
            replies = [await f for f in futs]
        except BaseException:
            # a lost connection fails them all at once: retrieve the others' errors too
            for f in futs:
                if f.done() and not f.cancelled():
                    f.exception()
            raise
        if raise_errors:
            for r in replies:
                if isinstance(r, ResponseError):
                    raise OutOfMemoryError(str(r)) if str(r).startswith("OOM") else r
        return replies

    async def aclose(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            if proto.waiters:  # a stalled peer never takes the close's data: drop it
                proto.transport.abort()
            else:
                proto.transport.close()


class RedisPyLean:
    """The router's interface over a redis-py client, for a client whose connection
    class :class:`Lean` does not know (a custom ``connection_class``): one node, no
    cluster. Replies are whatever redis-py makes of them."""

    cluster = False
    sharded_pubsub = False
    script_flags = False
    timeout = 10.0  # redis-py applies its own socket_timeout
    epoch = 0
    masters: list[tuple[str, int]] = [("", 0)]

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def start(self) -> None:
        return None

    async def refresh(self) -> None:
        return None

    def group(self, keys: Any) -> dict[tuple[str, int], list[str]]:
        return {self.masters[0]: list(keys)}

    def auto_partitions(self, flow: str) -> int:
        return 1

    def read_groups(self, keys: Any) -> list[tuple[tuple[str, int], list[str]]]:
        return [(self.masters[0], list(keys))]

    def addr_for(self, key: Any) -> tuple[str, int]:
        return self.masters[0]

    async def execute(
        self, *args: Any, idempotent: bool = False, timeout: float | None = None
    ) -> Any:
        # the deadline is redis-py's own socket_timeout
        return await self.redis.execute_command(*args)  # type: ignore[no-untyped-call]

    async def execute_on(self, addr: tuple[str, int], *args: Any) -> Any:
        return await self.redis.execute_command(*args)  # type: ignore[no-untyped-call]

    async def execute_many(
        self, commands: list[tuple[Any, ...]], *, raise_errors: bool = True
    ) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for c in commands:
                pipe.execute_command(*c)
            return list(await pipe.execute(raise_on_error=raise_errors))

    async def evalsha(self, sha: str, numkeys: int, *args: Any, idempotent: bool = False) -> Any:
        return await self.redis.evalsha(sha, numkeys, *args)

    async def script_load(self, source: str) -> Any:
        return await self.redis.script_load(source)

    async def aclose(self) -> None:
        return None


class _PushProtocol(asyncio.Protocol):
    def __init__(self, on_reply: Any) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.on_reply = on_reply
        self.transport: Any = None
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.last_seen = self.loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            keepalive(sock)

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.loop.time()
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            self.on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Subscriber:
    """A pub/sub connection to one node that stays subscribed: it reconnects with
    backoff and subscribes again to every channel; each confirmation (first or
    after a reconnect) and each message goes to ``on_event(kind, channel, data)``.
    ``sharded`` uses SSUBSCRIBE (Redis 7+). ``on_down`` is called each time a
    connection attempt fails, so an owner can move the channels elsewhere.

    A quiet subscription is pinged: a link that stays silent past the lean
    connection's timeout is closed and opened again (a stall without a reset would
    otherwise leave it deaf for good). When no connection could be kept for longer
    than that timeout, ``on_event(b"down", channel, None)`` is called once for each
    channel, so waiters can give up rather than wait forever."""

    def __init__(
        self,
        lean: Lean,
        on_event: Any,
        *,
        sharded: bool = False,
        on_down: Any = None,
    ) -> None:
        self._lean = lean
        self._on_event = on_event
        self._on_down = on_down
        self._verb = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self.channels: set[str] = set()
        self._proto: _PushProtocol | None = None
        self._task: asyncio.Task[None] | None = None

    def _on_reply(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3:
            self._on_event(reply[0], reply[1], reply[2])

    def _send(self, verb: str, channels: list[str]) -> None:
        if self._proto is not None and self._proto.transport is not None and channels:
            if verb.startswith("S"):  # sharded: one slot per command on a cluster
                self._proto.transport.write(b"".join(_pack(verb, c) for c in channels))
            else:
                self._proto.transport.write(_pack(verb, *channels))

    def subscribe(self, channel: str) -> None:
        if channel in self.channels:
            return
        self.channels.add(channel)
        if self._task is None:
            self._task = asyncio.create_task(self._keep(), name="aioflow-subscriber")
        else:
            self._send(self._verb, [channel])

    def unsubscribe(self, channel: str) -> None:
        if channel in self.channels:
            self.channels.discard(channel)
            self._send("SUNSUBSCRIBE" if self._verb == "SSUBSCRIBE" else "UNSUBSCRIBE", [channel])

    async def _keep(self) -> None:
        backoff = 0.05
        lean = self._lean
        timeout = lean.timeout
        ping_every = max(0.5, timeout / 2)
        loop = asyncio.get_running_loop()
        down_since: float | None = None
        told = False  # on_event(b"down") sent for this outage

        def lost() -> None:
            # no working connection since down_since: tell the owner once it lasts
            nonlocal down_since, told
            down_since = loop.time() if down_since is None else down_since
            if not told and loop.time() - down_since > timeout:
                told = True
                for channel in sorted(self.channels):
                    self._on_event(b"down", channel.encode(), None)

        while True:
            try:
                _, proto = await open_transport(
                    lean.endpoint, lambda: _PushProtocol(self._on_reply)
                )
            except RedisConnectionError:
                if self._on_down is not None:
                    self._on_down(self)
                lost()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            if lean.password:
                auth = [lean.username, lean.password] if lean.username else [lean.password]
                proto.transport.write(_pack("AUTH", *auth))
            self._proto = proto
            self._send(self._verb, sorted(self.channels))
            subscribed_at = loop.time()
            try:
                while not proto.closed.done():
                    await asyncio.wait([proto.closed], timeout=ping_every)
                    if proto.closed.done():
                        break
                    silent = loop.time() - proto.last_seen
                    if silent > ping_every + timeout:
                        log.warning(
                            "pub/sub link to %s silent for %.0f s: reconnecting",
                            lean.endpoint,
                            silent,
                        )
                        proto.transport.abort()
                        break
                    if proto.last_seen > subscribed_at:
                        down_since, told = None, False  # it answers: the outage is over
                    proto.transport.write(_PING)
            finally:
                self._proto = None
                proto.transport.close()
            lost()  # (a link that connects but stays silent counts as down too)
            if self._on_down is not None:
                self._on_down(self)

    async def aclose(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
