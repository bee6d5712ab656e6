"""The flows the benchmarks run; workers load them as ``benchmarks/bench_app.py:app``.

Every node function is trivial, so the figures measure aioflow, not the work:

- ``bench-single``: one vertex, ``x -> x + 1`` (W1, W2).
- ``bench-chain``: three vertices in a row, ``x -> x + 3`` (W3).
- ``bench-fanout``: an entry, ten vertices after it, and one join after all ten
  (``x -> sum(x + 1 + i for i in 0..9)``) (W4).
- ``bench-wait``: a ``wait`` on the event ``bench.go`` keyed by the input, then a node
  that answers how long after the event's send it ran (W6).
"""

from __future__ import annotations

import time
from typing import Any

import aioflow

FANOUT = 10

single = aioflow.Flow("bench-single")


@single.node
async def inc(x: int) -> int:
    return x + 1


chain = aioflow.Flow("bench-chain")


@chain.node
async def c1(x: int) -> int:
    return x + 1


@chain.node(after=c1)
async def c2(x: int) -> int:
    return x + 1


@chain.node(after=c2)
async def c3(x: int) -> int:
    return x + 1


fanout = aioflow.Flow("bench-fanout")


@fanout.node
async def entry(x: int) -> int:
    return x + 1


def _leaf(i: int) -> Any:
    async def leaf(x: int) -> int:
        return x + i

    leaf.__name__ = f"leaf{i}"
    return leaf


for _i in range(FANOUT):
    fanout.node(f"leaf{_i}", _leaf(_i), after=entry)


@fanout.node(after=[f"leaf{i}" for i in range(FANOUT)])
async def join(parts: dict[str, int]) -> int:
    return sum(parts.values())


waiting = aioflow.Flow("bench-wait")
waiting.wait("go", event="bench.go", key=str, timeout=3600)


@waiting.node(after="go")
async def resumed(event: dict[str, float]) -> float:
    """Seconds from the event's send (its ``sent``, the sender's clock) to now."""
    return time.time() - event["sent"]


def expected(flow: str, x: int) -> int:
    """The result each flow gives for input ``x`` (to check the runs really ran)."""
    if flow == single.name:
        return x + 1
    if flow == chain.name:
        return x + 3
    if flow == fanout.name:
        return sum(x + 1 + i for i in range(FANOUT))
    raise KeyError(flow)


app = aioflow.App(flows=[single, chain, fanout, waiting])
