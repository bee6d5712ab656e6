"""Settings: one frozen value, read from arguments and ``AIOFLOW_*`` variables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every knob of aioflow. Each field also reads from ``AIOFLOW_<FIELD>``
    (``AIOFLOW_REDIS_URL``, ``AIOFLOW_CONCURRENCY``, ...) via :meth:`from_env`.

    - ``redis_url``: the Redis to use; ``None`` lets ``aioflow dev`` start its own.
    - ``concurrency``: node tasks one worker runs at once (default 100).
    - ``visibility_timeout``: seconds a message may sit unacknowledged with no
      lease extension before another worker reclaims it (default 30).
    - ``max_deliveries``: deliveries of one message before it is dead-lettered (5).
    - ``result_ttl``: seconds a finished run (state, result, store) is kept (1 day).
    - ``max_body``: largest accepted HTTP request body in bytes (16 MiB).
    - ``host`` / ``port``: where the gateway listens (127.0.0.1:8080).
    - ``grace``: seconds a draining worker waits for running nodes on SIGTERM (30).
    - ``hmac_secret``: when set, the gateway requires ``X-Hub-Signature-256``
      (``sha256=`` HMAC of the body) on POST requests.
    - ``submit_replicas``: when > 0, a submit (``Client.submit``/``execute``,
      ``POST /flow/{name}``) returns only once that many replicas acknowledged
      it (Redis ``WAIT``), so a failover right after cannot lose the run; when
      fewer answer within ``submit_replicas_timeout`` seconds (1.0) it raises
      :class:`~aioflow.RedisUnavailable` (503), and submitting again with the
      same ``run_id`` is safe. Off (0) by default.
    - ``tracing``: ``1`` for OpenTelemetry spans through the process's tracer
      provider, ``console`` to print them, ``otlp`` to export them over OTLP/HTTP
      (the ``aioflow[otlp]`` extra; configured by the standard ``OTEL_*``
      variables); off by default.
    - ``metrics_port``: when set, a worker serves Prometheus metrics on
      ``http://host:metrics_port/metrics`` (``host`` as above); off by default.
    """

    redis_url: str | None = None
    concurrency: int = 100
    visibility_timeout: float = 30.0
    max_deliveries: int = 5
    result_ttl: float = 86400.0
    max_body: int = 16 * 1024 * 1024
    host: str = "127.0.0.1"
    port: int = 8080
    grace: float = 30.0
    hmac_secret: str | None = None
    submit_replicas: int = 0
    submit_replicas_timeout: float = 1.0
    tracing: str | None = None
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.visibility_timeout <= 0:
            raise ConfigError("visibility_timeout must be > 0")
        if self.max_deliveries < 1:
            raise ConfigError("max_deliveries must be >= 1")
        if self.result_ttl <= 0:
            raise ConfigError("result_ttl must be > 0")
        if self.max_body < 1:
            raise ConfigError("max_body must be >= 1")
        if self.grace < 0:
            raise ConfigError("grace must be >= 0")
        if self.submit_replicas < 0 or self.submit_replicas_timeout <= 0:
            raise ConfigError("submit_replicas must be >= 0 and submit_replicas_timeout > 0")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be a TCP port, got {self.metrics_port}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, /, **overrides: Any) -> Settings:
        """Defaults, then ``AIOFLOW_*`` variables, then ``overrides`` that are not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"AIOFLOW_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            try:
                if kind.startswith("int"):
                    values[f.name] = int(raw)
                elif kind.startswith("float"):
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise ConfigError(
                    f"AIOFLOW_{f.name.upper()}={raw!r} is not a valid {kind}"
                ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown settings: {sorted(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
