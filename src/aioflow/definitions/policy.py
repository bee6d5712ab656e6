"""Retry policy: how often and how soon a failed node attempt runs again."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from aioflow.core.errors import DefinitionError


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed node attempt is retried.

    ``retries`` is the number of retries after the first attempt (so a node
    runs at most ``retries + 1`` times). The n-th retry waits
    ``min(max_delay, backoff * multiplier ** (n - 1))`` seconds, scaled by a
    random factor in ``[1 - jitter, 1]``. Only exceptions that are instances
    of ``retry_on`` are retried; any other fails the vertex at once.
    Retries wait in Redis, not in a worker slot.
    """

    retries: int = 0
    backoff: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.2
    retry_on: tuple[type[BaseException], ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise DefinitionError(f"retries must be >= 0, got {self.retries}")
        if self.backoff < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise DefinitionError("backoff and max_delay must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise DefinitionError(f"jitter must be within [0, 1], got {self.jitter}")

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based) failing with ``error`` is retried."""
        if attempt > self.retries:
            return False
        # a CancelledError the node raised itself (not a stop) counts as an Exception
        if isinstance(error, asyncio.CancelledError) and Exception in self.retry_on:
            return True
        return isinstance(error, self.retry_on)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the attempt after attempt number ``attempt``."""
        base = min(self.max_delay, self.backoff * self.multiplier ** max(0, attempt - 1))
        factor = 1.0 - self.jitter * (rng or random).random()
        return base * factor


NO_RETRY = RetryPolicy()


_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Rate:
    """At most ``count`` executions per ``period`` seconds (a token bucket that
    holds up to ``count`` tokens, so a burst of ``count`` may start at once)."""

    count: int
    period: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"100/s"``, ``"10/m"`` or ``"500/h"``; raises :class:`DefinitionError`."""
        count, _, unit = text.partition("/") if isinstance(text, str) else ("", "", "")
        if not count.isdigit() or int(count) < 1 or unit not in _PERIODS:
            raise DefinitionError(f"invalid rate {text!r}: expected '<count>/s', '/m' or '/h'")
        return cls(int(count), _PERIODS[unit])

    @property
    def per_ms(self) -> float:
        return self.count / (self.period * 1000.0)
