"""The :class:`App`: the flows and settings the commands load."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .endpoint import KEEPALIVE
from .errors import ConfigError, DefinitionError
from .model import Flow
from .plan import compile_dag
from .settings import Settings


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


class App:
    """The flows a deployment serves, and its settings.

    ``app = aioflow.App(flows=[kyc, billing], redis_url="redis://...")`` is what
    ``aioflow serve|worker|dev module:app`` load. Settings not given here are
    read from ``AIOFLOW_*`` variables (see :class:`Settings`). Every flow is
    validated now, so a malformed graph fails at import, not at the first run.
    """

    def __init__(
        self,
        flows: Iterable[Flow],
        *,
        redis_url: str | None = None,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        self.flows = list(flows)
        names = [f.name for f in self.flows if isinstance(f, Flow)]
        if len(names) != len(self.flows):
            raise DefinitionError("App(flows=...) takes aioflow.Flow objects")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise DefinitionError(f"App has two flows named {sorted(dup)[0]!r}")
        for f in self.flows:
            compile_dag(f)
        base = settings or Settings.from_env()
        try:
            self.settings = base.replace(redis_url=redis_url, **overrides)
        except TypeError as e:
            raise ConfigError(str(e)) from None

    def flow(self, name: str) -> Flow:
        for f in self.flows:
            if f.name == name:
                return f
        raise KeyError(name)
