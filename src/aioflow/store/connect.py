"""TODO docstring (app)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aioflow.core.settings import Settings

from .endpoint import KEEPALIVE


def connect(url: str, *, max_connections: int = 64, timeout: float | None = None) -> Redis:
    """A Redis client on a blocking pool: callers wait for a free connection
    instead of failing when all are busy. Every reply is due within ``timeout``
    seconds (default: ``AIOFLOW_REDIS_TIMEOUT``, else 10), the lean connections
    made from this client included; sockets use TCP keepalive."""
    if timeout is None:
        timeout = Settings.from_env().redis_timeout
    # TCP keepalive has no meaning on a unix socket (redis-py refuses the option there)
    keepalive: dict[str, Any] = (
        {}
        if url.startswith("unix:")
        else {"socket_keepalive": True, "socket_keepalive_options": KEEPALIVE}
    )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=None,
        socket_connect_timeout=5,
        socket_timeout=timeout,
        **keepalive,
        health_check_interval=15,
        # a pooled connection that died with a restarted server is replaced and the
        # command sent again: every aioflow script is idempotent, so this is safe
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return Redis.from_pool(pool)
