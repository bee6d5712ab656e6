"""Where a Redis server is and how to open a socket to it: TCP, TLS or a unix socket.

The lean connections (conn.py) open their sockets here, so every way of
reaching Redis that redis-py's URL forms describe (``redis://``, ``rediss://``
with CA and client-certificate options, ``unix://``) is one code path.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import (
    Connection,
    RedisSSLContext,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import ConnectionError as RedisConnectionError

P = TypeVar("P", bound=asyncio.BaseProtocol)


@dataclass(frozen=True)
class Endpoint:
    """One Redis server: ``path`` for a unix socket, else ``host``/``port``, over TLS
    when ``ssl`` is set; the credentials and database to use on it."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    ssl: SSLContext | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    connect_timeout: float = 5.0
    # how long a reply may take before the connection counts as stalled (conn.py)
    timeout: float = 10.0

    def __str__(self) -> str:
        if self.path:
            return f"unix://{self.path}"
        return f"{'rediss' if self.ssl else 'redis'}://{self.host}:{self.port}"

    @classmethod
    def from_redis(cls, redis: Redis) -> Endpoint | None:
        """The server of a redis-py client; None for a connection class it does not know."""
        pool = redis.connection_pool
        kw = pool.connection_kwargs
        common: dict[str, Any] = {
            "username": kw.get("username"),
            "password": kw.get("password"),
            "db": int(kw.get("db", 0) or 0),
        }
        if kw.get("socket_connect_timeout"):
            common["connect_timeout"] = float(kw["socket_connect_timeout"])
        if kw.get("socket_timeout"):
            common["timeout"] = float(kw["socket_timeout"])
        kind = pool.connection_class
        if kind is UnixDomainSocketConnection:
            return cls(path=kw["path"], **common)
        if kind not in (Connection, SSLConnection):
            return None
        context = None
        if kind is SSLConnection:
            try:
                context = ssl_context(kw)
            except TypeError:  # an option this version does not know: let redis-py handle it
                return None
        return cls(
            host=kw.get("host", "localhost"),
            port=int(kw.get("port", 6379)),
            ssl=context,
            **common,
        )


# A peer that vanished without a FIN or RST (a partition, a NAT or load balancer
# that dropped the flow) is found by the kernel in ~30 s instead of the default 2 h.
KEEPALIVE: dict[int, int] = {
    opt: value
    for name, value in (("TCP_KEEPIDLE", 15), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    if (opt := getattr(socket, name, None)) is not None
}


def keepalive(sock: socket.socket) -> None:
    """Turn on TCP keepalive with :data:`KEEPALIVE`'s timings (TCP sockets only)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in KEEPALIVE.items():
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)


def ssl_options(kw: dict[str, Any]) -> dict[str, Any]:
    """The ``ssl_*`` options among redis-py connection keyword arguments."""
    return {k: v for k, v in kw.items() if k.startswith("ssl_")}


def ssl_context(kw: dict[str, Any]) -> SSLContext:
    """The context redis-py itself would build from the ``ssl_*`` options in ``kw``
    (raises TypeError for an option this redis-py does not know)."""
    options = {k.removeprefix("ssl_"): v for k, v in ssl_options(kw).items()}
    return RedisSSLContext(**options).get()


async def open_transport(endpoint: Endpoint, factory: Callable[[], P]) -> tuple[Any, P]:
    """Open a socket to ``endpoint`` with ``factory``'s protocol on it; raises
    redis-py's ``ConnectionError`` when that fails or takes longer than its timeout."""
    loop = asyncio.get_running_loop()
    try:
        if endpoint.path is not None:
            coro = loop.create_unix_connection(factory, endpoint.path)
        elif endpoint.ssl is not None:
            coro = loop.create_connection(
                factory,
                endpoint.host,
                endpoint.port,
                ssl=endpoint.ssl,
                server_hostname=endpoint.host,
            )
        else:
            coro = loop.create_connection(factory, endpoint.host, endpoint.port)
        async with asyncio.timeout(endpoint.connect_timeout):
            return await coro
    except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
        raise RedisConnectionError(f"cannot connect to Redis at {endpoint}: {e}") from e
