"""Every run ends cleanly (DESIGN invariant 12): when a run fails or is stopped, each
vertex it left running, waiting, retrying or parked ends ``cancelled`` in the same
script that ends the run, groups included; a late completion does not bring the run
back; ``retry`` reruns the failed and cancelled vertices and finishes."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

import aioflow
from aioflow.engine.engine import register
from aioflow.status import RunState, VertexStatus
from aioflow.store import keys
from aioflow.store.keys import RunId
from tests.engine_helpers import Stack, running
from tests.helpers import wait_until

T = 10.0
CANCELLED, COMPLETED, FAILED = "cancelled", "completed", "failed"
LIVE = {"running", "parked", "retrying", "waiting", "queued"}


def statuses(st: RunState) -> dict[str, str]:
    return {a: v.status.value for a, v in st.vertices.items()}


async def pel(redis: Any, flow: str) -> int:
    return int((await redis.xpending(keys.stream(flow, 0), "workers"))["pending"])


async def idle(redis: Any, flow: str) -> bool:
    """Nothing pending and nothing undelivered on the flow's stream."""
    stream = keys.stream(flow, 0)
    if await pel(redis, flow):
        return False
    groups: Any = await redis.xinfo_groups(stream)
    info: Any = await redis.xinfo_stream(stream)
    return bool(groups[0]["last-delivered-id"] == info["last-generated-id"])


async def failed_state(s: Stack, rid: str, vertex: str) -> RunState:
    with pytest.raises(aioflow.RunFailed) as info:
        await s.client.result(rid, timeout=T)
    assert info.value.vertex == vertex
    st = await s.client.state(rid)
    assert st.status is aioflow.Status.FAILED
    assert not LIVE & set(statuses(st).values()), statuses(st)
    return st


async def late_completions_change_nothing(
    s: Stack, rid: str, before: RunState, late: list[str], flow: str
) -> RunState:
    """After the gate opened: the vertices still running when the run failed complete
    (their outcome is recorded), and nothing else changes: no status, no new vertex."""

    async def landed() -> bool:
        st = await s.client.state(rid)
        return all(st.vertices[a].status is VertexStatus.COMPLETED for a in late)

    await wait_until(landed, timeout=T, what="the late completions applied")
    await wait_until(lambda: idle(s.redis, flow), timeout=T, what="nothing left on the stream")
    after = await s.client.state(rid)
    assert after.status is aioflow.Status.FAILED
    assert after.ended == before.ended and after.error == before.error
    expected = statuses(before) | dict.fromkeys(late, COMPLETED)
    assert statuses(after) == expected
    with pytest.raises(aioflow.RunFailed):
        await s.client.result(rid, timeout=T)
    return after


# -- foreach ------------------------------------------------------------------------------


async def test_foreach_item_failure_cancels_the_items_it_started(redis_url: str) -> None:
    flow = aioflow.Flow("ends-foreach")
    gate, a_started = asyncio.Event(), asyncio.Event()
    broken = {"bad": True}
    ran: Counter[str] = Counter()
    each = flow.foreach("each", lambda d: d)

    @each.node
    async def work(x: str) -> str:
        ran[x] += 1
        if x == "a":
            a_started.set()
        if x == "bad" and broken["bad"]:
            await a_started.wait()
            raise ValueError("bad item")
        await gate.wait()
        return x.upper()

    @flow.node(after="each")
    async def total(d: dict[str, str]) -> str:
        return "".join(d[k] for k in sorted(d))

    items = {"1": "a", "2": "bad", "3": "c", "4": "d", "5": "e", "6": "f"}
    # two slots: "a" and "bad" start, at most one more before the failure lands
    async with running([flow], redis_url, concurrency=2) as s:
        rid = await s.client.submit(flow, items)
        st = await failed_state(s, rid, "each[2]/work")
        got = statuses(st)
        started = [k for k in items if f"each[{k}]/work" in got]
        assert {"1", "2"} <= set(started) and len(started) <= 3, got
        expected = {"each": CANCELLED, "each[2]/work": FAILED}
        expected |= {f"each[{k}]/work": CANCELLED for k in started if k != "2"}
        assert got == expected
        # the items that were running when the run ended stopped the clock then
        for k in started:
            assert st.vertices[f"each[{k}]/work"].ended is not None

        gate.set()
        late = [f"each[{k}]/work" for k in started if k != "2"]
        await late_completions_change_nothing(s, rid, st, late, "ends-foreach")
        assert ran["c"] + ran["d"] + ran["e"] + ran["f"] <= 1  # the rest never started

    # retried with no worker up: what will run again is queued, the group running again
    broken["bad"] = False
    async with aioflow.Client(redis_url) as client:
        assert await client.retry(rid) == 7 - len(started)  # bad, and items never started
        again = statuses(await client.state(rid))
    assert again == {"each": "running", "each[2]/work": "queued"} | {
        f"each[{k}]/work": COMPLETED if k in started else "queued" for k in items if k != "2"
    }
    async with running([flow], redis_url, concurrency=2) as s:
        assert await s.client.result(rid, timeout=T) == "ABADCDEF"
        done = await s.client.state(rid)
    assert set(statuses(done).values()) == {COMPLETED}
    assert set(done.vertices) == {"each", "total", *(f"each[{k}]/work" for k in items)}
    assert ran["a"] == 1 and ran["bad"] == 2  # a's late output was reused


async def tag(x: Any) -> Any:
    return ["tag", x]


async def test_a_late_retry_leaves_the_cancelled_vertex_alone(redis_url: str) -> None:
    flow = aioflow.Flow("ends-late-retry")
    gate, slow_started = asyncio.Event(), asyncio.Event()
    attempts: list[int] = []

    @flow.node(retries=aioflow.RetryPolicy(retries=3, backoff=0.05, jitter=0.0))
    async def slow(x: int, ctx: aioflow.Context) -> int:
        attempts.append(ctx.attempt)
        slow_started.set()
        await gate.wait()
        raise ConnectionError("still down")

    @flow.node
    async def bad(x: int) -> int:
        await slow_started.wait()
        raise RuntimeError("bad")

    async with running([flow], redis_url) as s:
        rid = await s.client.submit(flow, 1)
        st = await failed_state(s, rid, "bad")
        assert statuses(st) == {"slow": CANCELLED, "bad": FAILED}
        gate.set()  # slow's attempt fails after its run did: it would retry
        await wait_until(lambda: idle(s.redis, "ends-late-retry"), timeout=T, what="acked")
        assert statuses(await s.client.state(rid)) == statuses(st)
        assert await s.redis.zcard(f"{RunId.parse(rid).tag}:z") == 0
        assert attempts == [1]


# -- subdag and branch --------------------------------------------------------------------


def slow_and_boom(dag: aioflow.Dag, gate: asyncio.Event, broken: dict[str, bool]) -> aioflow.Dag:
    """Adds two entries to ``dag``: ``slow`` waits for ``gate``; ``boom`` raises once
    slow runs (while ``broken``); ``join`` after both."""
    slow_started = asyncio.Event()

    @dag.node
    async def slow(x: int) -> int:
        slow_started.set()
        await gate.wait()
        return x + 1

    @dag.node
    async def boom(x: int) -> int:
        await slow_started.wait()
        if broken["boom"]:
            raise RuntimeError("boom")
        return x * 10

    @dag.node(after=[slow, boom])
    async def join(d: dict[str, int]) -> int:
        return d["slow"] + d["boom"]

    return dag


async def test_failure_inside_a_subdag_cancels_it(any_redis_url: str) -> None:
    gate, broken = asyncio.Event(), {"boom": True}
    flow = aioflow.Flow("ends-subdag")
    flow.subdag("sub", slow_and_boom(aioflow.Dag(), gate, broken))

    @flow.node(after="sub")
    async def after_sub(x: int) -> int:
        return -x

    async with running([flow], any_redis_url) as s:
        rid = await s.client.submit(flow, 1)
        st = await failed_state(s, rid, "sub[]/boom")
        assert statuses(st) == {"sub": CANCELLED, "sub[]/slow": CANCELLED, "sub[]/boom": FAILED}

        gate.set()
        await late_completions_change_nothing(s, rid, st, ["sub[]/slow"], "ends-subdag")

        broken["boom"] = False
        assert await s.client.retry(rid) == 1
        assert await s.client.result(rid, timeout=T) == -(2 + 10)
        done = statuses(await s.client.state(rid))
        assert done == dict.fromkeys(
            ["sub", "sub[]/slow", "sub[]/boom", "sub[]/join", "after_sub"], COMPLETED
        )


async def test_failure_inside_a_branch_cancels_it(redis_url: str) -> None:
    gate, broken = asyncio.Event(), {"boom": True}
    flow = aioflow.Flow("ends-branch")
    paths = flow.branch("br", lambda d: ["x"], conditions=["x", "y"])
    slow_and_boom(paths["x"], gate, broken)
    paths["y"].node("never", tag)

    async with running([flow], redis_url) as s:
        rid = await s.client.submit(flow, 1)
        st = await failed_state(s, rid, "br[x]/boom")
        # the untaken path ("y") was never reached: it is not listed
        assert statuses(st) == {"br": CANCELLED, "br[x]/slow": CANCELLED, "br[x]/boom": FAILED}

        gate.set()
        await late_completions_change_nothing(s, rid, st, ["br[x]/slow"], "ends-branch")

        broken["boom"] = False
        assert await s.client.retry(rid) == 1
        assert await s.client.result(rid, timeout=T) == {"x": 12}
        done = statuses(await s.client.state(rid))
        assert done == dict.fromkeys(["br", "br[x]/slow", "br[x]/boom", "br[x]/join"], COMPLETED)


# -- stop ---------------------------------------------------------------------------------


async def test_stop_cancels_running_waiting_and_retrying_vertices(redis_url: str) -> None:
    flow = aioflow.Flow("ends-stop")
    gate = asyncio.Event()
    holding: list[str] = []
    attempts: list[int] = []
    each = flow.foreach("each", lambda d: d)

    @each.node(concurrency=1)  # one item holds the slot, the others wait for it
    async def lim(x: str) -> str:
        holding.append(x)
        await gate.wait()
        return x

    @flow.node(retries=aioflow.RetryPolicy(retries=3, backoff=60.0, jitter=0.0))
    async def flaky(x: Any, ctx: aioflow.Context) -> None:
        attempts.append(ctx.attempt)
        raise ConnectionError("down")

    async with running([flow], redis_url, visibility_timeout=30) as s:
        rid = await s.client.submit(flow, {"1": "a", "2": "b", "3": "c"})

        async def settled() -> bool:
            got = statuses(await s.client.state(rid))
            return sorted(got.values()) == sorted(
                ["running", "running", "waiting", "waiting", "retrying"]
            )

        await wait_until(settled, timeout=T, what="one item running, two waiting, one retrying")
        assert await s.client.stop(rid) is aioflow.Status.STOPPED
        st = await s.client.state(rid)
        assert st.status is aioflow.Status.STOPPED
        assert statuses(st) == dict.fromkeys(
            ["each", "each[1]/lim", "each[2]/lim", "each[3]/lim", "flaky"], CANCELLED
        )
        [holder] = holding  # the item that was running: cancelled with an end time
        key = {"a": "1", "b": "2", "c": "3"}[holder]
        assert st.vertices[f"each[{key}]/lim"].ended is not None

        # the worker cancels the running item; its record does not change the status
        await wait_until(lambda: idle(s.redis, "ends-stop"), timeout=T, what="worker idle")
        assert statuses(await s.client.state(rid)) == statuses(st)
        assert holding == [holder] and attempts == [1]
        with pytest.raises(aioflow.RunStopped):
            await s.client.result(rid, timeout=T)


async def test_failure_while_paused_cancels_parked_vertices(redis_url: str) -> None:
    flow = aioflow.Flow("ends-paused")
    gate_a, gate_bad = asyncio.Event(), asyncio.Event()
    broken = {"bad": True}
    started: list[str] = []

    @flow.node
    async def a(x: int) -> int:
        started.append("a")
        await gate_a.wait()
        return x + 1

    @flow.node(after=a)
    async def b(x: int) -> int:
        return x * 2

    @flow.node
    async def bad(x: int) -> int:
        started.append("bad")
        await gate_bad.wait()
        if broken["bad"]:
            raise RuntimeError("bad")
        return x

    @flow.node(after=[b, bad])
    async def end(d: dict[str, int]) -> int:
        return d["b"] + d["bad"]

    async with running([flow], redis_url) as s:
        rid = await s.client.submit(flow, 1)
        await wait_until(lambda: sorted(started) == ["a", "bad"], timeout=T, what="both started")
        assert await s.client.pause(rid) is aioflow.Status.PAUSED
        gate_a.set()

        async def parked() -> bool:
            return statuses(await s.client.state(rid)).get("b") == "parked"

        await wait_until(parked, timeout=T, what="b parked")
        gate_bad.set()
        st = await failed_state(s, rid, "bad")
        assert statuses(st) == {"a": COMPLETED, "b": CANCELLED, "bad": FAILED}
        assert await s.redis.exists(RunId.parse(rid).parked) == 0

        broken["bad"] = False
        assert await s.client.retry(rid) == 2  # b and bad
        assert await s.client.result(rid, timeout=T) == 4 + 1
        assert set(statuses(await s.client.state(rid)).values()) == {COMPLETED}


# -- dead letters -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def refreshing(redis: Redis, stream: str, mid: str) -> AsyncIterator[None]:
    """Keep a message idle-free (XCLAIM JUSTID counts no delivery) while the block runs."""

    async def loop() -> None:
        while True:
            await redis.xclaim(stream, "workers", "ghost", 0, [mid], justid=True)
            await asyncio.sleep(0.05)  # a heartbeat, not a wait for a condition

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_dead_letter_cancels_the_rest_of_its_run(redis_url: str, redis: Redis) -> None:
    flow = aioflow.Flow("ends-dlq")
    gate, hang_started = asyncio.Event(), asyncio.Event()
    ran: Counter[str] = Counter()

    @flow.node
    async def victim(x: int) -> int:  # entered first: its message is the stream's first
        ran["victim"] += 1
        return x + 1

    @flow.node
    async def hang(x: int) -> int:
        ran["hang"] += 1
        hang_started.set()
        await gate.wait()
        return x * 10

    @flow.node(after=[victim, hang])
    async def join(d: dict[str, int]) -> int:
        return d["victim"] + d["hang"]

    stream = keys.stream("ends-dlq", 0)
    await register(redis, [flow])
    async with aioflow.Client(redis_url) as client:
        rid = await client.submit(flow, 1)
    # a ghost consumer takes victim's message and claims it twice more: 3 deliveries
    resp: Any = await redis.xreadgroup("workers", "ghost", {stream: ">"}, count=1)
    [(mid, fields)] = resp[0][1]
    assert fields[b"a"] == b"victim"
    for _ in range(2):
        await redis.xclaim(stream, "workers", "ghost", 0, [mid])
    async with running([flow], redis_url, max_deliveries=2, visibility_timeout=0.5) as s:
        async with refreshing(redis, stream, mid.decode()):
            await asyncio.wait_for(hang_started.wait(), T)
        # victim goes idle now: the worker reclaims it (4th delivery) and dead-letters it
        st = await failed_state(s, rid, "victim")
        assert st.error is not None and st.error["type"] == "DeadLetter"
        assert statuses(st) == {"victim": FAILED, "hang": CANCELLED}
        assert st.vertices["hang"].ended is not None
        assert await redis.xlen(f"{RunId.parse(rid).tag}:dlq") == 1

        gate.set()
        await late_completions_change_nothing(s, rid, st, ["hang"], "ends-dlq")

        assert await s.client.retry(rid) == 1
        assert await s.client.result(rid, timeout=T) == 2 + 10
        assert statuses(await s.client.state(rid)) == dict.fromkeys(
            ["victim", "hang", "join"], COMPLETED
        )
        assert ran == Counter(victim=1, hang=1)


# -- the script alone ---------------------------------------------------------------------


async def test_a_run_with_thousands_of_live_vertices_ends_in_one_step(
    redis_url: str, redis: Redis
) -> None:
    """More live vertices than Lua can unpack at once (~8000 values): all cancelled."""
    rid = RunId("ends-big", 0, "k1")
    n = 5000
    fields: Any = {"status": "running", "created": 1.0, "s:done": "completed"}
    for i in range(n):
        fields[f"s:v{i}"] = "running" if i % 2 else "waiting"
        fields[f"t:v{i}"] = "2.0 1000"
    await redis.hset(rid.run, mapping=fields)
    async with aioflow.Client(redis_url) as client:
        assert await client.stop(str(rid)) is aioflow.Status.STOPPED
        st = await client.state(str(rid))
    assert st.status is aioflow.Status.STOPPED
    assert statuses(st) == {"done": COMPLETED} | {f"v{i}": CANCELLED for i in range(n)}
    assert all(st.vertices[f"v{i}"].ended == st.ended for i in range(1, n, 2))
    assert all(st.vertices[f"v{i}"].ended is None for i in range(0, n, 2))
