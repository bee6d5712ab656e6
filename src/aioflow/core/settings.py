"""Settings: one frozen value, read from arguments and ``AIOFLOW_*`` variables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .security import Tokens


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every knob of aioflow. Each field also reads from ``AIOFLOW_<FIELD>``
    (``AIOFLOW_REDIS_URL``, ``AIOFLOW_CONCURRENCY``, ...) via :meth:`from_env`.

    - ``redis_url``: the Redis to use; ``None`` lets ``aioflow dev`` start its own.
    - ``concurrency``: node tasks one worker runs at once (default 100).
    - ``visibility_timeout``: seconds a message may sit unacknowledged with no
      lease extension before another worker reclaims it (default 30).
    - ``max_deliveries``: deliveries of one message before it is dead-lettered (5).
    - ``redis_timeout``: seconds a Redis reply may take (10). A connection whose
      reply is later is closed and replaced (a link that stalled without a reset);
      a blocking read is given its block plus a few seconds instead.
    - ``result_ttl``: seconds a finished run (state, result, store) is kept (1 day).
    - ``max_body``: largest accepted HTTP request body in bytes (16 MiB).
    - ``max_batch``: most runs one ``POST /flow/{name}/batch`` may start (1000).
    - ``host`` / ``port``: where the gateway listens (127.0.0.1:8080).
    - ``grace``: seconds a draining worker waits for running nodes on SIGTERM (30).
    - ``submit_replicas``: when > 0, a submit (``Client.submit``/``execute``,
      ``POST /flow/{name}``) returns only once that many replicas acknowledged
      it (Redis ``WAIT``), so a failover right after cannot lose the run; when
      fewer answer within ``submit_replicas_timeout`` seconds (1.0) it raises
      :class:`~aioflow.RedisUnavailable` (503), and submitting again with the
      same ``run_id`` is safe. Off (0) by default.
    - ``hmac_secret``: a secret, or a comma-separated list of them (``new,old``
      while rotating). When set, every POST to the gateway carries
      ``X-Aioflow-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``
      (or a bearer token, see ``api_tokens``), each signature is accepted once,
      and callbacks are signed the same way with the first secret.
    - ``signature_tolerance``: seconds a signature's ``t`` may differ from the
      gateway's clock (300).
    - ``api_tokens``: ``"read:TOKEN,run:TOKEN,admin:TOKEN"`` (a token may be given
      as ``sha256:<hex digest>``). When set, every endpoint but ``/healthz`` and
      the dashboard's static files needs ``Authorization: Bearer <token>``:
      GETs need ``read``, starting runs ``run``, steering runs and replaying dead
      letters ``admin``; each scope implies the ones below it.
    - ``callback_allow_private``: let callbacks reach loopback, private,
      link-local and other non-public addresses (False).
    - ``callback_hosts``: comma-separated host names callbacks may go to; None
      allows any public host.
    - ``expose_tracebacks``: include the worker's traceback in errors over HTTP
      (state, ``?wait=`` answers, callbacks). False; ``aioflow dev`` turns it on.
    - ``max_value``: largest run input or node output in bytes once encoded
      (8 MiB); a larger input is refused at submit, a larger output fails its vertex.
    - ``max_foreach``: most items one foreach split may produce (100,000).
    - ``tracing``: ``1`` for OpenTelemetry spans through the process's tracer
      provider, ``console`` to print them, ``otlp`` to export them over OTLP/HTTP
      (the ``aioflow[otlp]`` extra; configured by the standard ``OTEL_*``
      variables); off by default.
    - ``metrics_port``: when set, a worker serves Prometheus metrics on
      ``http://host:metrics_port/metrics`` (``host`` as above); off by default.
    - ``version_wait``: seconds a run waits for a live worker serving its pinned
      flow version before it fails (60); also how recently a version must have
      been seen to count as served when a run is submitted by name. Keep it
      several times the heartbeat interval, ``min(visibility_timeout / 3, 5)``.
    - ``version_retention``: seconds a flow version nobody serves stays in the
      registry before it is dropped (1 day).
    - ``event_ttl``: seconds an event sent is kept for the waits that register after
      it (a run created before the event counts it when it reaches its wait), and an
      event id is remembered (a second send of it changes nothing) (1 day).
    """

    redis_url: str | None = None
    concurrency: int = 100
    visibility_timeout: float = 30.0
    max_deliveries: int = 5
    redis_timeout: float = 10.0
    result_ttl: float = 86400.0
    max_body: int = 16 * 1024 * 1024
    max_batch: int = 1000
    host: str = "127.0.0.1"
    port: int = 8080
    grace: float = 30.0
    hmac_secret: str | None = field(default=None, repr=False)
    submit_replicas: int = 0
    submit_replicas_timeout: float = 1.0
    tracing: str | None = None
    signature_tolerance: float = 300.0
    api_tokens: str | None = field(default=None, repr=False)
    callback_allow_private: bool = False
    callback_hosts: str | None = None
    expose_tracebacks: bool = False
    max_value: int = 8 * 1024 * 1024
    max_foreach: int = 100_000
    metrics_port: int | None = None
    version_wait: float = 60.0
    version_retention: float = 86400.0
    event_ttl: float = 86400.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.visibility_timeout <= 0:
            raise ConfigError("visibility_timeout must be > 0")
        if self.max_deliveries < 1:
            raise ConfigError("max_deliveries must be >= 1")
        if not 0 < self.redis_timeout < float("inf"):
            raise ConfigError(
                f"redis_timeout must be a number of seconds > 0, got {self.redis_timeout}"
            )
        if self.result_ttl <= 0:
            raise ConfigError("result_ttl must be > 0")
        if self.max_body < 1:
            raise ConfigError("max_body must be >= 1")
        if self.max_batch < 1:
            raise ConfigError("max_batch must be >= 1")
        if self.grace < 0:
            raise ConfigError("grace must be >= 0")
        if self.submit_replicas < 0 or self.submit_replicas_timeout <= 0:
            raise ConfigError("submit_replicas must be >= 0 and submit_replicas_timeout > 0")
        if self.signature_tolerance <= 0:
            raise ConfigError("signature_tolerance must be > 0")
        if self.max_value < 1 or self.max_foreach < 1:
            raise ConfigError("max_value and max_foreach must be >= 1")
        Tokens.parse(self.api_tokens)  # a bad entry fails at startup, not per request
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be a TCP port, got {self.metrics_port}")
        if self.version_wait <= 0 or self.version_retention <= 0:
            raise ConfigError("version_wait and version_retention must be > 0")
        if not 0 < self.event_ttl < float("inf"):
            raise ConfigError(f"event_ttl must be a number of seconds > 0, got {self.event_ttl}")

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
                if kind.startswith("bool"):
                    values[f.name] = _bool(raw)
                elif kind.startswith("int"):
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


def _bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
