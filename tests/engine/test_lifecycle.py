"""Run lifecycle: pause, resume, stop (client, HTTP, CLI), caller-chosen ids, delayed
starts and listing.

Nodes block on events the test controls, so the test knows exactly what runs when.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

import aioflow
from aioflow.engine.engine import Engine
from aioflow.gateway.routes import create_app
from aioflow.store import keys
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import RedisClient
from tests.engine_helpers import Stack, running
from tests.helpers import wait_until

T = 10.0
HttpClient = TestClient[web.Request, web.Application]


# -- helpers ------------------------------------------------------------------------------


async def pel(redis: RedisClient, flow: str, partition: int = 0) -> int:
    """Entries delivered and not yet acked on the flow's stream."""
    info: Any = await redis.xpending(keys.stream(flow, partition), keys.GROUP)
    return int(info["pending"])


async def idle(redis: RedisClient, flow: str, partition: int = 0) -> bool:
    """Nothing pending and nothing undelivered on the flow's stream."""
    stream = keys.stream(flow, partition)
    if await pel(redis, flow, partition):
        return False
    groups: Any = await redis.xinfo_groups(stream)
    info: Any = await redis.xinfo_stream(stream)
    return bool(groups[0]["last-delivered-id"] == info["last-generated-id"])


@contextlib.asynccontextmanager
async def gateway(
    flows: Sequence[aioflow.Flow], url: str
) -> AsyncIterator[tuple[HttpClient, Stack]]:
    async with running(flows, url) as stack:
        app = create_app(stack.redis, flows=list(flows), settings=aioflow.Settings(redis_url=url))
        async with TestClient(TestServer(app)) as http:
            yield http, stack


async def body(resp: ClientResponse, status: int) -> Any:
    text = await resp.text()
    assert resp.status == status, (resp.status, text)
    assert resp.content_type == "application/json", text
    return json.loads(text)


async def cli(*args: str) -> tuple[int, str, str]:
    """``aioflow <args>`` as a subprocess, without blocking the event loop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOFLOW_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioflow",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# -- pause and resume ---------------------------------------------------------------------


def chain_flow(name: str, gate: asyncio.Event, starts: list[tuple[str, str]]) -> aioflow.Flow:
    """first (waits for ``gate``) -> second -> third; every start is recorded."""
    flow = aioflow.Flow(name)

    @flow.node
    async def first(x: int, ctx: aioflow.Context) -> int:
        starts.append((ctx.run_id, ctx.vertex))
        await gate.wait()
        return x + 1

    @flow.node(after=first)
    async def second(x: int, ctx: aioflow.Context) -> int:
        starts.append((ctx.run_id, ctx.vertex))
        return x * 2

    @flow.node(after=second)
    async def third(x: int, ctx: aioflow.Context) -> dict[str, int]:
        starts.append((ctx.run_id, ctx.vertex))
        return {"n": x}

    return flow


async def test_pause_fifty_runs_in_flight_then_resume(redis_url: str, redis: Redis) -> None:
    gate = asyncio.Event()
    starts: list[tuple[str, str]] = []
    flow = chain_flow("pz", gate, starts)
    async with running([flow], redis_url, concurrency=64) as s:
        rids = [await s.client.submit("pz", i) for i in range(50)]
        await wait_until(lambda: len(starts) == 50, what="50 first vertices running")
        assert sorted(starts) == sorted((r, "first") for r in rids)

        for rid in rids:
            assert await s.client.pause(rid) is aioflow.Status.PAUSED
        gate.set()
        # every running vertex finishes; its completion is applied and acked, and the
        # child it makes ready is parked instead of enqueued
        await wait_until(lambda: s.workers[0].completed == 50, what="50 completions applied")
        await wait_until(lambda: idle(redis, "pz"), what="worker idle")

        assert sorted(starts) == sorted((r, "first") for r in rids), "a paused run went on"
        for rid in rids:
            st = await s.client.state(rid)
            assert st.status is aioflow.Status.PAUSED
            assert st.vertices["first"].status == "completed"
            assert st.vertices["second"].status == "parked"
            assert "third" not in st.vertices
            assert await redis.llen(keys.RunId.parse(rid).parked) == 1

        for rid in rids:
            assert await s.client.resume(rid) is aioflow.Status.RUNNING
        results = await asyncio.gather(*(s.client.result(r, timeout=T) for r in rids))
        assert results == [{"n": (i + 1) * 2} for i in range(50)]
        counts = collections.Counter(starts)
        assert len(counts) == 150 and set(counts.values()) == {1}, "a vertex ran twice"
        for rid in rids:
            assert not await redis.exists(keys.RunId.parse(rid).parked)
        await wait_until(lambda: idle(redis, "pz"), what="worker idle")


async def test_pause_pending_delayed_run_parks_its_entry(redis_url: str, redis: Redis) -> None:
    gate = asyncio.Event()
    gate.set()
    starts: list[tuple[str, str]] = []
    async with running([chain_flow("pd", gate, starts)], redis_url) as s:
        rid = await s.client.submit("pd", 1, delay=0.2)
        assert await s.client.pause(rid) is aioflow.Status.PAUSED
        parked = keys.RunId.parse(rid).parked
        # the delayed entry comes due while the run is paused: it is parked, not run

        async def is_parked() -> bool:
            return bool(await redis.llen(parked))

        await wait_until(is_parked, what="entry parked")
        await wait_until(lambda: idle(redis, "pd"), what="worker idle")
        st = await s.client.state(rid)
        assert st.status is aioflow.Status.PAUSED
        assert st.vertices["first"].status == "parked"
        assert starts == []
        # it was pending when paused: it goes back to pending, then runs
        assert await s.client.resume(rid) is aioflow.Status.PENDING
        assert await s.client.result(rid, timeout=T) == {"n": 4}
        assert [v for _, v in starts] == ["first", "second", "third"]


async def test_control_over_http(any_redis_url: str) -> None:
    gate = asyncio.Event()
    starts: list[tuple[str, str]] = []
    flow = chain_flow("hc", gate, starts)
    async with gateway([flow], any_redis_url) as (http, stack):
        try:
            run_id = (await body(await http.post("/flow/hc", json=1), 202))["run_id"]
            await wait_until(lambda: len(starts) == 1, what="first running")
            doc = await body(await http.post(f"/flow/hc/run/{run_id}/pause"), 200)
            assert doc == {"run_id": run_id, "status": "paused"}
            doc = await body(await http.post(f"/flow/hc/run/{run_id}/pause"), 409)
            assert doc["error"] == "invalid_transition" and "paused" in doc["detail"]
            gate.set()
            part = keys.RunId.parse(run_id).partition
            await wait_until(lambda: idle(stack.redis, "hc", part), what="worker idle")
            doc = await body(await http.get(f"/flow/hc/run/{run_id}"), 200)
            assert doc["status"] == "paused"
            assert doc["vertices"]["second"]["status"] == "parked"
            assert len(starts) == 1

            doc = await body(await http.post(f"/flow/hc/run/{run_id}/resume"), 200)
            assert doc == {"run_id": run_id, "status": "running"}
            assert await stack.client.result(run_id, timeout=T) == {"n": 4}
            # a completed run can be neither resumed, paused nor stopped
            for action in ("resume", "pause", "stop"):
                doc = await body(await http.post(f"/flow/hc/run/{run_id}/{action}"), 409)
                assert doc["error"] == "invalid_transition"
                assert "completed" in doc["detail"]

            # a stopped run cannot be paused nor resumed
            gate.clear()
            other = (await body(await http.post("/flow/hc", json=2), 202))["run_id"]
            doc = await body(await http.post(f"/flow/hc/run/{other}/stop"), 200)
            assert doc == {"run_id": other, "status": "stopped"}
            for action in ("pause", "resume"):
                doc = await body(await http.post(f"/flow/hc/run/{other}/{action}"), 409)
                assert doc["error"] == "invalid_transition"
                assert "stopped" in doc["detail"]
            doc = await body(await http.get(f"/flow/hc/run/{other}"), 200)
            assert doc["status"] == "stopped"

            doc = await body(await http.post("/flow/hc/run/hc.0.nosuchrun/pause"), 404)
            assert doc["error"] == "run_not_found"
        finally:
            gate.set()


async def test_control_from_the_command_line(redis_url: str) -> None:
    gate = asyncio.Event()
    starts: list[tuple[str, str]] = []
    async with running([chain_flow("cl", gate, starts)], redis_url) as s:
        try:
            rid = await s.client.submit("cl", 1)
            await wait_until(lambda: len(starts) == 1, what="first running")
            assert await cli("run", "pause", rid, "--redis-url", redis_url) == (
                0,
                f"{rid}: paused\n",
                "",
            )
            gate.set()
            await wait_until(lambda: idle(s.redis, "cl"), what="worker idle")
            code, out, _ = await cli("run", "state", rid, "--redis-url", redis_url)
            assert code == 0
            doc = json.loads(out)
            assert doc["run_id"] == rid and doc["status"] == "paused"
            assert doc["vertices"]["second"] == {
                "status": "parked",
                "attempts": 0,
                "started": None,
                "ended": None,
                "queued": None,
                "queue_wait": None,
            }

            code, out, _ = await cli("run", "resume", rid, "--redis-url", redis_url)
            assert (code, out) == (0, f"{rid}: running\n")
            assert await s.client.result(rid, timeout=T) == {"n": 4}

            # an illegal transition: exit status 2 and a message on stderr
            code, out, err = await cli("run", "resume", rid, "--redis-url", redis_url)
            assert code == 2 and out == ""
            assert "cannot resume" in err and "completed" in err

            gate.clear()
            other = await s.client.submit("cl", 2)
            code, out, _ = await cli("run", "stop", other, "--redis-url", redis_url)
            assert (code, out) == (0, f"{other}: stopped\n")
            with pytest.raises(aioflow.RunStopped):
                await s.client.result(other, timeout=T)
        finally:
            gate.set()


# -- stop ---------------------------------------------------------------------------------


async def test_stop_cancels_a_node_in_a_long_await(redis_url: str, redis: Redis) -> None:
    flow = aioflow.Flow("st")
    running_now = asyncio.Event()
    other_gate = asyncio.Event()
    cancelled_at: list[float] = []
    ran: list[str] = []

    @flow.node
    async def slow(x: int) -> int:
        ran.append("slow")
        running_now.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled_at.append(time.monotonic())
            raise
        return x

    @flow.node(after=slow)
    async def after_slow(x: int) -> int:
        ran.append("after_slow")
        return x

    @flow.node
    async def other(x: int) -> int:
        ran.append("other")
        await other_gate.wait()
        return x

    @flow.node(after=other)
    async def after_other(x: int) -> int:
        ran.append("after_other")
        return x

    async with running([flow], redis_url) as s:
        rid = await s.client.submit("st", 1)
        await asyncio.wait_for(running_now.wait(), T)
        await wait_until(lambda: len(ran) == 2, what="both entries running")
        t0 = time.monotonic()
        assert await s.client.stop(rid) is aioflow.Status.STOPPED
        await wait_until(lambda: bool(cancelled_at), timeout=1.0, what="slow cancelled")
        assert cancelled_at[0] - t0 < 1.0
        with pytest.raises(aioflow.RunStopped):
            await s.client.result(rid, timeout=T)
        with pytest.raises(aioflow.RunStopped):
            await s.client.execute("st", 1, run_id=keys.RunId.parse(rid).key, timeout=T)

        # "other" does not take cancellation into account here: it completes after the
        # stop, which must enqueue nothing more
        other_gate.set()
        await wait_until(lambda: idle(redis, "st"), what="worker idle")
        assert sorted(ran) == ["other", "slow"]
        st = await s.client.state(rid)
        assert st.status is aioflow.Status.STOPPED
        assert st.ended is not None
        assert st.vertices["slow"].status == "cancelled"
        assert "after_slow" not in st.vertices and "after_other" not in st.vertices
        assert s.workers[0]._inflight == {}


# -- caller-chosen run ids ----------------------------------------------------------------


async def test_same_run_id_submitted_concurrently_is_one_run(redis_url: str, redis: Redis) -> None:
    flow = aioflow.Flow("once", partitions=4)
    executed: list[Any] = []
    gate = asyncio.Event()

    @flow.node
    async def work(x: int) -> int:
        executed.append(x)
        await gate.wait()
        return x * 10

    async with running([flow], redis_url) as s:
        ids = await asyncio.gather(*(s.client.submit("once", i, run_id="same") for i in range(20)))
        assert len(set(ids)) == 1
        rid = keys.RunId.parse(ids[0])
        assert rid.flow == "once" and rid.key == "same"
        waiting = asyncio.gather(
            *(s.client.execute("once", 99, run_id="same", timeout=T) for _ in range(10))
        )
        await wait_until(lambda: len(executed) == 1, what="the one run started")
        gate.set()
        results = await waiting
        assert len(executed) == 1
        assert results == [executed[0] * 10] * 10
        assert await s.client.result(ids[0], timeout=T) == executed[0] * 10
        indexed = [await redis.zrange(f"{keys.tag('once', p)}:i", 0, -1) for p in range(4)]
        assert sorted(sum(indexed, [])) == [b"same"]
        assert await redis.zcard(f"{rid.tag}:i") == 1
        # after it finished, the same id still answers that run
        assert await s.client.submit("once", 5, run_id="same") == ids[0]
        assert await s.client.execute("once", 5, run_id="same", timeout=T) == executed[0] * 10
        assert len(executed) == 1


@pytest.mark.parametrize(
    "bad",
    ["", "has space", "x" * 65, "dot.ted", "sl/ash", "col:on", "brace{", "ünï", "a\nb", "ab\n"],
)
async def test_invalid_run_ids_are_rejected(redis_url: str, redis: Redis, bad: str) -> None:
    flow = aioflow.Flow("ids")

    @flow.node
    async def work(x: int) -> int:
        return x

    async with running([flow], redis_url) as s:
        with pytest.raises(aioflow.InvalidRunId):
            await s.client.submit("ids", 1, run_id=bad)
        with pytest.raises(aioflow.InvalidRunId):
            await s.client.execute("ids", 1, run_id=bad, timeout=T)
        for run_id in (bad, f"ids.0.{bad}", f"other.0.{bad}"):
            with pytest.raises(aioflow.InvalidRunId):
                await s.client.state(run_id)
        assert [k async for k in redis.scan_iter(match="af:{ids:0}:r:*")] == []
        assert await redis.zcard(f"{keys.tag('ids', 0)}:i") == 0


# -- delayed start ------------------------------------------------------------------------


async def test_delayed_start_is_pending_until_due(redis_url: str, redis: Redis) -> None:
    flow = aioflow.Flow("later")
    ran_at: list[float] = []

    @flow.node
    async def work(x: int) -> int:
        ran_at.append(time.time())
        return x + 1

    async with running([flow], redis_url) as s:
        rid = await s.client.submit("later", 1, delay=0.5)
        st = await s.client.state(rid)
        assert st.status is aioflow.Status.PENDING and st.vertices == {}
        assert st.created is not None
        created = st.created
        assert await redis.zcard(f"{keys.tag('later', 0)}:z") == 1
        assert await redis.xlen(keys.stream("later", 0)) == 0

        async def done() -> bool:
            return (await s.client.state(rid)).status is aioflow.Status.COMPLETED

        await wait_until(done, what="delayed run completed")
        assert await s.client.result(rid, timeout=T) == 2
        st = await s.client.state(rid)
        assert st.created == created
        assert st.started is not None and st.started >= created + 0.499
        assert len(ran_at) == 1 and ran_at[0] >= created + 0.499
        assert await redis.zcard(f"{keys.tag('later', 0)}:z") == 0


# -- listing ------------------------------------------------------------------------------


def listing_flow() -> aioflow.Flow:
    flow = aioflow.Flow("ls", partitions=3)

    @flow.node
    async def work(x: int) -> int:
        if x % 3 == 0:
            raise ValueError(f"{x} is a multiple of 3")
        return x

    return flow


async def _pages(
    client: aioflow.Client, flow: str, limit: int, status: str | None = None
) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        runs, cursor = await client.runs(flow, status=status, limit=limit, cursor=cursor)
        pages.append([r.run_id for r in runs])
        if status is not None:
            assert {r.status.value for r in runs} <= {status}
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not end"


async def test_runs_listing_newest_first_paginated_and_filtered(redis_url: str) -> None:
    flow = listing_flow()
    async with gateway([flow], redis_url) as (http, s):
        rids = []
        for i in range(1, 24):
            rids.append(await s.client.submit("ls", i))
        for i, rid in enumerate(rids, 1):
            if i % 3 == 0:
                with pytest.raises(aioflow.RunFailed):
                    await s.client.result(rid, timeout=T)
            else:
                assert await s.client.result(rid, timeout=T) == i
        newest_first = rids[::-1]
        failed = [r for i, r in zip(range(23, 0, -1), newest_first, strict=True) if i % 3 == 0]
        completed = [r for r in newest_first if r not in failed]

        pages = await _pages(s.client, "ls", 5)
        assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
        assert sum(pages, []) == newest_first
        assert sum(await _pages(s.client, "ls", 500), []) == newest_first
        assert sum(await _pages(s.client, "ls", 23), []) == newest_first
        assert sum(await _pages(s.client, "ls", 2, "failed"), []) == failed
        assert sum(await _pages(s.client, "ls", 4, "completed"), []) == completed
        assert sum(await _pages(s.client, "ls", 3, "running"), []) == []

        runs, _ = await s.client.runs("ls", limit=1)
        assert runs[0].run_id == rids[-1] and runs[0].status is aioflow.Status.COMPLETED
        assert runs[0].created is not None and runs[0].ended is not None

        # the same over HTTP
        seen: list[str] = []
        cursor: str | None = None
        while True:
            url = "/flow/ls/runs?limit=6" + (f"&cursor={cursor}" if cursor else "")
            doc = await body(await http.get(url), 200)
            assert set(doc) == {"runs", "next_cursor"}
            for r in doc["runs"]:
                assert set(r) == {"run_id", "status", "created", "ended"}
            seen += [r["run_id"] for r in doc["runs"]]
            cursor = doc["next_cursor"]
            if cursor is None:
                break
        assert seen == newest_first
        doc = await body(await http.get("/flow/ls/runs?status=failed&limit=500"), 200)
        assert [r["run_id"] for r in doc["runs"]] == failed
        assert {r["status"] for r in doc["runs"]} == {"failed"}
        assert doc["next_cursor"] is None
        doc = await body(await http.get("/flow/ls/runs"), 200)
        assert [r["run_id"] for r in doc["runs"]] == newest_first[:20]
        await body(await http.get("/flow/ls/runs?status=bogus"), 400)
        await body(await http.get("/flow/ls/runs?limit=x"), 400)
        await body(await http.get("/flow/nosuchflow/runs"), 404)


async def test_bad_listing_cursor_is_a_client_error(redis_url: str) -> None:
    flow = listing_flow()
    async with gateway([flow], redis_url) as (http, s):
        assert await s.client.execute("ls", 1, timeout=T) == 1
        bad = ("abc", "nan", "1-2")
        answers = [(await http.get(f"/flow/ls/runs?cursor={c}")).status for c in bad]
        assert answers == [400, 400, 400]
        for cursor in bad:
            with pytest.raises((aioflow.AioflowError, ValueError)):
                await s.client.runs("ls", cursor=cursor)


async def test_pagination_with_equal_creation_times(redis_url: str) -> None:
    """Runs created in the same instant (several gateways, a coarse clock) must still
    each appear exactly once across pages."""
    flow = listing_flow()
    async with running([flow], redis_url) as s:
        engine = Engine(s.redis, clock=lambda: 1_700_000_000.0)
        try:
            rids = [str((await engine.submit("ls", i))[0]) for i in range(1, 8)]
        finally:
            await engine.close()
        pages = await _pages(s.client, "ls", 3)
        listed = sum(pages, [])
        assert len(listed) == len(set(listed)), "a run listed twice"
        assert sorted(listed) == sorted(rids), "runs missing from the pages"


async def test_stop_reaches_a_node_when_the_control_message_was_missed(
    redis_url: str, redis: Redis
) -> None:
    """A network blip on the worker's control subscription while a run is stopped:
    the stop message is lost, yet the run's running node must still be cancelled
    (stop "cancels the run's running async nodes"), not hold its slot forever."""
    flow = aioflow.Flow("blip")
    running_now = asyncio.Event()
    cancelled: list[float] = []

    @flow.node
    async def slow(x: int) -> int:
        running_now.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(time.monotonic())
            raise
        return x

    async with running([flow], redis_url, visibility_timeout=1.5, grace=0.5) as s:
        rid = keys.RunId.parse(await s.client.submit("blip", 1))
        await asyncio.wait_for(running_now.wait(), T)
        # what Client.stop does, sent in the same write as a kill of every pub/sub
        # connection: the worker cannot resubscribe before the message goes out
        async with redis.pipeline(transaction=False) as pipe:
            pipe.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            pipe.eval(
                SCRIPTS.source["control"], 1, rid.stream, rid.key, "stop", repr(time.time()), 60000
            )
            pipe.publish(keys.CONTROL, f"stop {rid}")
            res: Any = await pipe.execute()
        assert res[1] == [b"ok", b"stopped"]
        assert (await s.client.state(str(rid))).status is aioflow.Status.STOPPED
        await wait_until(lambda: bool(cancelled), timeout=5, what="slow cancelled")
        await wait_until(lambda: idle(redis, "blip"), what="worker idle")
        assert s.workers[0]._inflight == {}
