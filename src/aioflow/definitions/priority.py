"""Run priorities and how a worker shares its free slots between them.

A run submitted with ``priority="high"`` or ``"low"`` lives on its partition's
stream of that priority (``af:{flow:p}:qh``, ``:q``, ``:ql``: one hash tag, so
scripts stay single-slot); the priority is stored in the run hash (``pr``) and
every message of the run goes back to that stream (children, retries, resumes,
wake-ups). A worker reads the priorities by weight, 6:3:1 of its free slots,
so high goes first and low still moves; a priority with nothing waiting last
time gets one probing slot and its share goes to the others.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from aioflow.core.errors import InvalidPriority

Priority: TypeAlias = Literal["high", "default", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "default", "low")
WEIGHTS: Mapping[str, int] = {"high": 6, "default": 3, "low": 1}
SUFFIX: Mapping[str, str] = {"high": "h", "default": "", "low": "l"}
# the order in which one free slot at a time goes round the priorities (6:3:1)
_CYCLE = ("high", "default", "high", "low", "high", "default", "high", "default", "high", "high")


def check(priority: str | None) -> Priority:
    """The priority, ``"default"`` for None; raises :class:`InvalidPriority`."""
    if priority is None:
        return "default"
    for p in PRIORITIES:
        if priority == p:
            return p
    raise InvalidPriority(f"invalid priority {priority!r}: use 'high', 'default' or 'low'")


def of_stream(stream: str) -> Priority:
    """The priority a partition's stream carries (``:qh``, ``:q``, ``:ql``)."""
    if stream.endswith(":qh"):
        return "high"
    if stream.endswith(":ql"):
        return "low"
    return "default"


@dataclass(frozen=True, slots=True)
class Read:
    """One XREADGROUP: these streams, COUNT each."""

    priority: str
    streams: tuple[str, ...]
    count: int


def shares(
    free: int, present: Sequence[str], busy: Collection[str], tick: int = 0
) -> dict[str, int]:
    """How many of ``free`` slots each priority in ``present`` (high to low) gets.

    Each priority gets one slot (for those not in ``busy``, nothing found there
    last time, a probe); the rest is shared by weight among the busy ones (all
    of them when none is busy), remainders to the higher. With fewer slots than
    priorities, the slots go round the priorities 6:3:1, ``tick`` saying where
    the round is.
    """
    out = {p: 0 for p in present}
    if free <= 0 or not present:
        return out
    if free < len(present):
        i = tick
        while free > 0:
            p = _CYCLE[i % len(_CYCLE)]
            i += 1
            if p in out and out[p] == 0:
                out[p] = 1
                free -= 1
        return out
    hot = [p for p in present if p in busy] or list(present)
    for p in present:  # one each first, so that no busy priority is left out
        out[p] = 1
        free -= 1
    total = sum(WEIGHTS[p] for p in hot)
    given = 0
    for p in hot:
        n = free * WEIGHTS[p] // total
        out[p] += n
        given += n
    for p in hot:  # what rounding left, to the higher priorities first
        if given >= free:
            break
        out[p] += 1
        given += 1
    return out


def plan_reads(
    free: int,
    streams: Mapping[str, Sequence[str]],
    busy: Collection[str],
    tick: int = 0,
) -> list[Read]:
    """The reads of one round: ``streams`` maps each priority to its partitions'
    streams. COUNT applies per stream, so a share smaller than the number of
    streams reads only that many of them (starting at ``tick``, rotating); the
    total never exceeds ``free``."""
    present = [p for p in PRIORITIES if streams.get(p)]
    reads = []
    for p, n in shares(free, present, busy, tick).items():
        ss = streams[p]
        if n <= 0:
            continue
        if n >= len(ss):
            reads.append(Read(p, tuple(ss), n // len(ss)))
        else:
            start = tick % len(ss)
            reads.append(Read(p, tuple(ss[(start + i) % len(ss)] for i in range(n)), 1))
    return reads
