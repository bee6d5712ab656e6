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
import socket
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport
        self.lost: Exception | None = None

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
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
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
        """A lean connection to the same server as ``redis``; None for TLS or unix sockets."""
        pool = redis.connection_pool
        if pool.connection_class is not Connection:
            return None
        kw = pool.connection_kwargs
        return cls(
            kw.get("host", "localhost"),
            int(kw.get("port", 6379)),
            db=int(kw.get("db", 0) or 0),
            username=kw.get("username"),
            password=kw.get("password"),
        )

    async def _open(self) -> _Protocol:
        async with self._lock:
            if self._proto is not None and self._proto.lost is None:
                return self._proto
            loop = asyncio.get_running_loop()
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(_Protocol, self.host, self.port), self.connect_timeout
                )
            except (OSError, TimeoutError) as e:
                raise RedisConnectionError(
                    f"cannot connect to Redis at {self.host}:{self.port}: {e}"
                ) from e
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
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto.waiters.append(fut)
        proto.transport.write(hiredis.pack_command(args))
        reply = await fut
        if isinstance(reply, ResponseError):
            if str(reply).startswith("NOSCRIPT"):
                raise NoScriptError(str(reply))
            raise reply
        return reply

    async def execute(self, *args: Any) -> Any:
        proto = self._proto
        if proto is None or proto.lost is not None:
            proto = await self._open()
        return await self._send(proto, *args)

    async def evalsha(self, sha: str, numkeys: int, *args: Any) -> Any:
        return await self.execute("EVALSHA", sha, numkeys, *args)

    async def script_load(self, source: str) -> Any:
        return await self.execute("SCRIPT", "LOAD", source)

    async def aclose(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()


class RedisPyLean:
    """The same interface over a redis-py client, for servers :class:`Lean` cannot
    reach (TLS, unix sockets). Replies are whatever redis-py makes of them."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def execute(self, *args: Any) -> Any:
        return await self.redis.execute_command(*args)  # type: ignore[no-untyped-call]

    async def evalsha(self, sha: str, numkeys: int, *args: Any) -> Any:
        return await self.redis.evalsha(sha, numkeys, *args)

    async def script_load(self, source: str) -> Any:
        return await self.redis.script_load(source)

    async def aclose(self) -> None:
        return None


Conn = Lean | RedisPyLean


def lean(redis: Redis) -> Lean | RedisPyLean:
    """The fastest connection to the server of ``redis`` that aioflow can use."""
    return Lean.from_redis(redis) or RedisPyLean(redis)
