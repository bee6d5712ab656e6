"""Flows of the waits tests (also loaded by worker subprocesses: ``tests/waits/flows.py:app``)."""

from __future__ import annotations

from typing import Any

import aioflow

# sleep: an hour of fake time, then on
napper = aioflow.Flow("napper")


@napper.node
async def before(data: Any) -> Any:
    return data


napper.sleep("nap", seconds=3600, after=before)


@napper.node(after="nap")
async def after_nap(data: Any) -> Any:
    return {"woke": data}


# sleep until a time the input names
alarm = aioflow.Flow("alarm")
alarm.sleep("until", until=lambda d: d["at"])


@alarm.node(after="until")
async def ring(data: Any) -> Any:
    return data["at"]


# a wait resolved by a signal, with a timeout
review = aioflow.Flow("review")


@review.node
async def score(data: Any) -> Any:
    return {"user": data["user"], "score": 7}


review.wait("manual", timeout=60, after=score)


@review.node(after="manual")
async def decide(data: Any) -> Any:
    return {"approved": bool(data and data.get("approved"))}


# a wait with a default: a timeout gives the default as output
lenient = aioflow.Flow("lenient")
lenient.wait("maybe", timeout=30, default={"approved": "by default"})


# a wait retried once after its timeout
patient = aioflow.Flow("patient")
patient.wait("twice", timeout=10, retries=aioflow.RetryPolicy(retries=1, backoff=1, jitter=0))

# many runs sleeping a long real time (the slot test, the SIGKILL test)
sleepy = aioflow.Flow("sleepy")
sleepy.sleep("long", seconds=float(3600))

short_sleep = aioflow.Flow("short-sleep")
short_sleep.sleep("short", seconds=1.5)


@short_sleep.node(after="short")
async def up(data: Any) -> Any:
    return data


quick = aioflow.Flow("quick")


@quick.node
async def work(data: Any) -> Any:
    return data * 2


# child flows
child = aioflow.Flow("child")


@child.node
async def double(data: Any) -> Any:
    if data == "boom":
        raise ValueError("child says no")
    return data * 2


parent = aioflow.Flow("parent")


@parent.node
async def prepare(data: Any) -> Any:
    return data


parent.call("kid", child, after=prepare)


@parent.node(after="kid")
async def finish(data: Any) -> Any:
    return {"child": data}


# a parent whose child waits (for stop tests)
waiting_child = aioflow.Flow("waiting-child")
waiting_child.wait("forever")
stuck_parent = aioflow.Flow("stuck-parent")
stuck_parent.call("kid", waiting_child)

app = aioflow.App(
    flows=[
        napper,
        alarm,
        review,
        lenient,
        patient,
        sleepy,
        short_sleep,
        quick,
        child,
        parent,
        waiting_child,
        stuck_parent,
    ]
)
