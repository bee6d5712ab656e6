"""A flow ticking every second whose node appends "<tick> <pid>" to the file named
by ``SCHED_TICK_LOG``. Loaded by tests/test_schedule_multiprocess.py."""

from __future__ import annotations

import os

import aioflow

ticks = aioflow.Flow("ticks")
ticks.schedule("each-second", every=1)


@ticks.node
def record(_: object, ctx: aioflow.Context) -> str:  # a plain def: its file write is blocking
    tick = ctx.options["tick"][0]
    with open(os.environ["SCHED_TICK_LOG"], "a") as f:
        f.write(f"{tick} {os.getpid()}\n")
    return tick


app = aioflow.App(flows=[ticks])
