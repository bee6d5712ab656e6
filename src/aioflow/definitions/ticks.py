"""When a schedule's ticks fall: :class:`Schedule` and its arithmetic.

Pure functions of epoch milliseconds, so every process computes the same tick
times and tests drive them with any clock. ``every=`` ticks sit on a grid
anchored at the Unix epoch; cron expressions match wall-clock times in the
schedule's time zone (see :meth:`Schedule.next_after` for daylight saving).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from croniter import CroniterError, croniter

from aioflow.core import codec
from aioflow.core.errors import DefinitionError

__all__ = ["Schedule", "tick_key"]


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError) as e:  # ZoneInfoNotFoundError is a KeyError
        raise DefinitionError(f"unknown time zone {name!r} ({e})") from None


def _cron(expr: str, start: datetime) -> croniter:
    return croniter(expr, start, second_at_beginning=len(expr.split()) == 6)


def _instant(wall: datetime, tz: ZoneInfo) -> float:
    """Epoch seconds of a naive wall time in ``tz``. A time that happens twice
    (clocks went back) is its first occurrence; a time that never happens
    (clocks jumped forward) is the instant of the jump."""
    t0 = wall.replace(tzinfo=tz, fold=0).timestamp()
    if datetime.fromtimestamp(t0, tz).replace(tzinfo=None) == wall:
        return t0
    # in a gap: fold=1 reads it with the offset after the jump (an instant before
    # it), fold=0 with the offset before (one after it); the jump lies between
    lo, hi = math.floor(wall.replace(tzinfo=tz, fold=1).timestamp()), math.ceil(t0)
    after = datetime.fromtimestamp(hi, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return float(hi)


@dataclass(frozen=True)
class Schedule:
    """A flow's schedule, made by :meth:`aioflow.Flow.schedule`: one run per tick.

    ``every`` is a period in seconds (at least 1), ticking on a grid anchored
    at the Unix epoch (``every=3600`` ticks on the hour, UTC). ``cron`` is a
    cron expression of 5 fields (minute hour day month weekday) or 6 (a
    seconds field first), read as wall-clock time in ``timezone``. ``data`` is
    the input of every run. ``catch_up`` is how many ticks missed while no
    worker or gateway ticked (the most recent ones) still run when one starts;
    older missed ticks are skipped.
    """

    name: str
    every: float | None = None
    cron: str | None = None
    data: Any = None
    timezone: str = "UTC"
    catch_up: int = 0

    def __post_init__(self) -> None:
        what = f"schedule {self.name!r}"
        if (self.every is None) == (self.cron is None):
            raise DefinitionError(f"{what}: give exactly one of every= and cron=")
        if self.every is not None:
            if isinstance(self.every, bool) or not isinstance(self.every, int | float):
                raise DefinitionError(f"{what}: every must be a number of seconds")
            if not (math.isfinite(self.every) and self.every >= 1):
                raise DefinitionError(f"{what}: every must be at least 1 second")
            if self.timezone != "UTC":
                raise DefinitionError(
                    f"{what}: timezone applies to cron= only (every= ticks on the UTC epoch grid)"
                )
        if self.cron is not None:
            if not isinstance(self.cron, str) or len(self.cron.split()) not in (5, 6):
                raise DefinitionError(
                    f"{what}: cron must have 5 fields (minute hour day month weekday) "
                    f"or 6 (seconds first), got {self.cron!r}"
                )
            try:
                _cron(self.cron, datetime(2000, 1, 1)).get_next(datetime)
            except (CroniterError, ValueError) as e:
                raise DefinitionError(
                    f"{what}: invalid cron expression {self.cron!r}: {e}"
                ) from None
        if not isinstance(self.timezone, str):
            raise DefinitionError(f"{what}: timezone must be an IANA name such as 'Europe/Paris'")
        try:
            _zone(self.timezone)
        except DefinitionError as e:
            raise DefinitionError(f"{what}: {e}") from None
        if isinstance(self.catch_up, bool) or not isinstance(self.catch_up, int):
            raise DefinitionError(f"{what}: catch_up must be an int")
        if self.catch_up < 0:
            raise DefinitionError(f"{what}: catch_up must be >= 0, got {self.catch_up}")
        try:
            codec.encode(self.data, "data")
        except (TypeError, ValueError) as e:  # orjson's JSONEncodeError is a TypeError
            raise DefinitionError(f"{what}: data must be JSON-serialisable ({e})") from None

    def next_after(self, after_ms: int) -> int:
        """The first tick strictly after ``after_ms`` (epoch milliseconds).

        Cron wall times follow the time zone's daylight saving: a time that
        happens twice (clocks go back) ticks once, at its first occurrence; a
        time skipped (clocks go forward) ticks at the instant of the jump.
        """
        if self.every is not None:
            step = round(self.every * 1000)
            return (after_ms // step + 1) * step
        return next(self._cron_ticks(after_ms))

    def _cron_ticks(self, after_ms: int) -> Iterator[int]:
        # wall time -> instant is monotonic (non-decreasing) under _instant's rules,
        # so one pass over the wall times from after_ms yields the ticks in order
        assert self.cron is not None
        tz = _zone(self.timezone)
        start = datetime.fromtimestamp(after_ms // 1000, tz).replace(tzinfo=None)
        it = _cron(self.cron, start)
        last = after_ms
        while True:
            tick = round(_instant(it.get_next(datetime), tz) * 1000)
            if tick > last:
                last = tick
                yield tick

    def ticks(self, after_ms: int, until_ms: int) -> list[int]:
        """Ticks in ``(after_ms, until_ms]``, oldest first."""
        if self.every is not None:
            step = round(self.every * 1000)
            return list(range((after_ms // step + 1) * step, until_ms + 1, step))
        out: list[int] = []
        for t in self._cron_ticks(after_ms):
            if t > until_ms:
                break
            out.append(t)
        return out

    def to_doc(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "every": self.every,
            "cron": self.cron,
            "data": self.data,
            "timezone": self.timezone,
            "catch_up": self.catch_up,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Schedule:
        return cls(
            doc["name"],
            every=doc.get("every"),
            cron=doc.get("cron"),
            data=doc.get("data"),
            timezone=doc.get("timezone", "UTC"),
            catch_up=int(doc.get("catch_up", 0)),
        )


def tick_key(schedule: str, tick_ms: int) -> str:
    """The run id of a tick: the same for every process, so the caller-chosen-id
    dedup makes every submission after the first a no-op."""
    stamp = datetime.fromtimestamp(tick_ms / 1000, UTC).strftime("%Y%m%dT%H%M%S")
    if tick_ms % 1000:
        stamp += f"{tick_ms % 1000:03d}"
    key = f"sched-{schedule}-{stamp}Z"
    if len(key) > 64:  # long schedule names: keep the key within RUN_KEY_RE
        digest = hashlib.sha1(schedule.encode()).hexdigest()[:16]
        key = f"sched-{digest}-{stamp}Z"
    return key
