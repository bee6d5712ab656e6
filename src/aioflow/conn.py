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
import socket
from ssl import SSLContext
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from .aio import cancel_and_wait
from .endpoint import Endpoint, open_transport


class NotConnected(RedisConnectionError):
    """The connection could not be opened: the command was never sent."""


def _pack(*args: Any) -> bytes:
    packed: bytes = hiredis.pack_command(args)
    return packed


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport
        self.lost: Exception | None = None
        # kept: asyncio.get_running_loop() costs a getpid() syscall per call
        self.loop = asyncio.get_running_loop()
        self.out: list[bytes] | None = None  # while a pass batches: what it sends next

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

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"connection to Redis lost: {exc or 'closed by server'}")
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(self.lost)


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
        )
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.connect_timeout = connect_timeout
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
            path=ep.path,
            ssl=ep.ssl,
        )

    async def _open(self) -> _Protocol:
        async with self._lock:
            if self._proto is not None and self._proto.lost is None:
                return self._proto
            try:
                _, proto = await open_transport(self.endpoint, _Protocol)
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
    async def _send(proto: _Protocol, *args: Any) -> Any:
        if proto.lost is not None or proto.transport is None:
            raise proto.lost or RedisConnectionError("not connected")
        fut: asyncio.Future[Any] = proto.loop.create_future()
        proto.waiters.append(fut)
        proto.send(_pack(*args))
        reply = await fut
        if isinstance(reply, ResponseError):
            text = str(reply)
            if text.startswith("NOSCRIPT"):
                raise NoScriptError(text)
            if text.startswith("LOADING"):  # restarting: a connection error, retried
                raise BusyLoadingError(text)
            raise reply
        return reply

    async def execute(self, *args: Any) -> Any:
        proto = self._proto
        if proto is None or proto.lost is not None:
            proto = await self._open()
        return await self._send(proto, *args)

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
        proto.waiters.extend(futs)
        proto.send(b"".join(_pack(*c) for c in commands))
        replies = [await f for f in futs]
        if raise_errors:
            for r in replies:
                if isinstance(r, ResponseError):
                    raise r
        return replies

    async def aclose(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()


class RedisPyLean:
    """The router's interface over a redis-py client, for a client whose connection
    class :class:`Lean` does not know (a custom ``connection_class``): one node, no
    cluster. Replies are whatever redis-py makes of them."""

    cluster = False
    sharded_pubsub = False
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

    async def execute(self, *args: Any, idempotent: bool = False) -> Any:
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
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
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
    connection attempt fails, so an owner can move the channels elsewhere."""

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
        while True:
            try:
                _, proto = await open_transport(
                    lean.endpoint, lambda: _PushProtocol(self._on_reply)
                )
            except RedisConnectionError:
                if self._on_down is not None:
                    self._on_down(self)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            if lean.password:
                auth = [lean.username, lean.password] if lean.username else [lean.password]
                proto.transport.write(_pack("AUTH", *auth))
            self._proto = proto
            self._send(self._verb, sorted(self.channels))
            try:
                await proto.closed
            finally:
                self._proto = None
                proto.transport.close()
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
