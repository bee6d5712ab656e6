"""Redis refusing or not answering, as a worker's loops see it: one warning when an
episode starts and one line when it ends, instead of a warning (or a traceback)
per attempt, and the backoff between attempts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    OutOfMemoryError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def is_oom(exc: BaseException | None) -> bool:
    """Whether ``exc`` is Redis refusing a write at ``maxmemory`` (``-OOM ...``)."""
    # redis-py raises OutOfMemoryError with the "OOM " cut off; a raw reply keeps it
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and str(exc).startswith("OOM")
    )


class Episode:
    """Logs ``what`` failing once per episode (the first failure, at WARNING) and its
    end (at INFO, with how long it lasted and how many attempts failed), and keeps
    the backoff: :meth:`failed` answers how long to wait before the next attempt."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        *,
        first: float = 0.05,
        cap: float = 2.0,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._log = log
        self._on_failure = on_failure
        self.what = what
        self._first = first
        self._cap = cap
        self.backoff = first
        self.since: float | None = None
        self.failures = 0
        self.episodes = 0

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException, **extra: Any) -> float:
        """Count a failure (warn if it starts an episode); answers the pause to take."""
        self.failures += 1
        if self._on_failure is not None:
            self._on_failure(exc)
        if self.since is None:
            self.since = time.monotonic()
            self.episodes += 1
            cause = "Redis is full (maxmemory)" if is_oom(exc) else "Redis unavailable"
            self._log.warning(
                "%s failed: %s (%s); retrying with backoff, logged again when it recovers",
                self.what,
                cause,
                exc,
                extra=extra or None,
            )
        pause = self.backoff
        self.backoff = min(self.backoff * 2, self._cap)
        return pause

    def ok(self) -> None:
        """The call succeeded: end the episode, if one was going on."""
        if self.since is not None:
            self._log.info(
                "%s works again after %.1f s (%d failed attempts)",
                self.what,
                time.monotonic() - self.since,
                self.failures,
            )
            self.since = None
            self.failures = 0
        self.backoff = self._first


# What "Redis is unavailable" looks like, a cluster mid-failover included.
REDIS_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    ClusterError,
    ClusterDownError,
    TryAgainError,
    MasterDownError,
    RedisClusterException,
    AskError,  # MovedError too: a redirection redis-py gave up following
)
