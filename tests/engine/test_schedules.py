"""Schedules in-process, on the testing kit's fake clock: ticks, catch-up, pause and
resume (client, HTTP, CLI), definitions changed on deploy, concurrent tickers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

import aioflow
from aioflow.definitions.ticks import tick_key
from aioflow.engine.engine import register
from aioflow.engine.schedule import Scheduler
from aioflow.gateway.routes import create_app
from aioflow.store import keys
from aioflow.store.topology import RedisClient
from aioflow.testing import FakeClock, Kit
from tests.helpers import run_aioflow, wait_until

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z: on every grid used here
MIN = 60_000


def ticker(name: str = "ticker", seen: list[tuple[str, str]] | None = None) -> aioflow.Flow:
    flow = aioflow.Flow(name)

    @flow.node
    async def work(data: Any, ctx: aioflow.Context) -> Any:
        if seen is not None:
            seen.append((ctx.options["schedule"][0], ctx.options["tick"][0]))
        return data

    return flow


def rid(flow: str, schedule: str, tick_ms: int, partitions: int = 1) -> str:
    key = tick_key(schedule, tick_ms)
    return f"{flow}.{keys.partition_for(key, partitions, caller_chosen=True)}.{key}"


async def last_done(redis: RedisClient, flow: str, name: str) -> int | None:
    score = await redis.zscore(keys.schedules(flow), name)
    return None if score is None else int(score)


async def has_state(redis: RedisClient, flow: str, name: str) -> bool:
    return await last_done(redis, flow, name) is not None


async def finished(kit: Kit, run_id: str) -> Any:
    """The result of a tick's run, once the scheduler has submitted it."""

    async def exists() -> bool:
        try:
            await kit.client.state(run_id)
            return True
        except aioflow.RunNotFound:
            return False

    await wait_until(exists, timeout=5, what=f"run {run_id}")
    return await kit.client.result(run_id, timeout=5)


async def run_keys(kit: Kit, flow: str) -> set[str]:
    runs, _ = await kit.client.runs(flow, limit=500)
    return {r.run_id for r in runs}


async def test_one_run_per_tick_as_the_clock_advances(
    aioflow_kit: Kit, aioflow_clock: FakeClock
) -> None:
    seen: list[tuple[str, str]] = []
    flow = ticker(seen=seen)
    flow.schedule("minutely", every=60, data={"n": 1})
    aioflow_clock.now = T0 + 30
    await aioflow_kit.worker(flow)
    redis = aioflow_kit.redis
    # a new schedule ticks from now on: the mark is set, nothing ran
    await wait_until(lambda: has_state(redis, "ticker", "minutely"), what="schedule state")
    assert await last_done(redis, "ticker", "minutely") == (T0 + 30) * 1000
    assert seen == []

    aioflow_clock.advance(30)  # wakes the scheduler: no real waiting
    first = rid("ticker", "minutely", T0 * 1000 + MIN)
    assert await finished(aioflow_kit, first) == {"n": 1}
    assert seen == [("minutely", "2026-01-01T00:01:00Z")]

    aioflow_clock.advance(125)  # two more ticks fall; this process was ticking: both run
    await wait_until(lambda: len(seen) == 3, timeout=5, what="two more runs")
    assert [t for _, t in seen] == [
        "2026-01-01T00:01:00Z",
        "2026-01-01T00:02:00Z",
        "2026-01-01T00:03:00Z",
    ]
    st = (await aioflow_kit.client.schedules("ticker"))[0]
    assert (st.name, st.paused, st.last_tick, st.next_tick) == (
        "minutely",
        False,
        T0 + 180,
        T0 + 240,
    )


async def test_catch_up_runs_the_most_recent_missed_ticks(
    aioflow_kit: Kit, aioflow_clock: FakeClock
) -> None:
    flow = ticker()
    flow.schedule("caught", every=60, catch_up=2)
    flow.schedule("skipped", every=60)
    redis = aioflow_kit.redis
    # ticking last happened at T0, then nothing ran for ten minutes
    await register(redis, [flow])
    await redis.zadd(keys.schedules("ticker"), {"caught": T0 * 1000, "skipped": T0 * 1000})
    aioflow_clock.now = T0 + 10 * 60 + 30
    await aioflow_kit.worker(flow)

    want = {rid("ticker", "caught", T0 * 1000 + n * MIN) for n in (9, 10)}

    async def caught_up() -> bool:
        return await last_done(redis, "ticker", "caught") == T0 * 1000 + 10 * MIN

    await wait_until(caught_up, what="catch-up")
    assert await run_keys(aioflow_kit, "ticker") == want
    for r in want:
        await finished(aioflow_kit, r)

    # from here on both tick normally
    aioflow_clock.advance(30)
    await finished(aioflow_kit, rid("ticker", "skipped", T0 * 1000 + 11 * MIN))
    assert await run_keys(aioflow_kit, "ticker") == want | {
        rid("ticker", s, T0 * 1000 + 11 * MIN) for s in ("caught", "skipped")
    }


async def test_pause_and_resume(aioflow_kit: Kit, aioflow_clock: FakeClock) -> None:
    flow = ticker()
    flow.schedule("paused", every=60)  # first: handled before the sentinel in a pass
    flow.schedule("sentinel", every=60)
    aioflow_clock.now = T0 + 30
    await aioflow_kit.worker(flow)
    redis, client = aioflow_kit.redis, aioflow_kit.client
    await wait_until(lambda: has_state(redis, "ticker", "sentinel"), what="schedule state")

    st = await client.pause_schedule("ticker", "paused")
    assert st.paused and st.next_tick is None
    aioflow_clock.advance(3 * 60)  # three ticks fall while paused

    async def sentinel_at(n: int) -> bool:
        return await last_done(redis, "ticker", "sentinel") == T0 * 1000 + n * MIN

    await wait_until(lambda: sentinel_at(3), what="sentinel ticks")
    assert {r.split(".")[2] for r in await run_keys(aioflow_kit, "ticker")} == {
        tick_key("sentinel", T0 * 1000 + n * MIN) for n in (1, 2, 3)
    }

    st = await client.resume_schedule("ticker", "paused")
    assert not st.paused and st.next_tick == T0 + 4 * 60
    aioflow_clock.advance(60)
    # the ticks that fell while paused are skipped, the next one runs
    await finished(aioflow_kit, rid("ticker", "paused", T0 * 1000 + 4 * MIN))
    await wait_until(lambda: sentinel_at(4), what="sentinel tick 4")
    paused_runs = [r for r in await run_keys(aioflow_kit, "ticker") if "-paused-" in r]
    assert paused_runs == [rid("ticker", "paused", T0 * 1000 + 4 * MIN)]

    try:
        await client.pause_schedule("ticker", "nope")
    except aioflow.UnknownSchedule as e:
        assert "'nope'" in str(e)
    else:
        raise AssertionError("pausing an unknown schedule must raise")


async def test_the_registered_definition_rules(aioflow_kit: Kit, aioflow_clock: FakeClock) -> None:
    """A deploy that changes or removes a schedule changes what every process ticks,
    including processes still running the old code."""
    old = ticker()
    old.schedule("job", every=60)
    old.schedule("sentinel", every=60)
    aioflow_clock.now = T0 + 30
    await aioflow_kit.worker(old)
    redis = aioflow_kit.redis
    await wait_until(lambda: has_state(redis, "ticker", "job"), what="schedule state")

    new = ticker()
    new.schedule("job", every=120)  # T0+60 is no longer a tick of "job"
    new.schedule("sentinel", every=60)
    await register(redis, [new])

    async def sentinel_at(n: int) -> bool:
        return await last_done(redis, "ticker", "sentinel") == T0 * 1000 + n * MIN

    aioflow_clock.advance(30)
    await wait_until(lambda: sentinel_at(1), what="tick at T0+60")
    assert rid("ticker", "job", T0 * 1000 + MIN) not in await run_keys(aioflow_kit, "ticker")
    aioflow_clock.advance(60)
    await finished(aioflow_kit, rid("ticker", "job", T0 * 1000 + 2 * MIN))

    removed = ticker()
    removed.schedule("sentinel", every=60)
    await register(redis, [removed])
    aioflow_clock.advance(120)
    await wait_until(lambda: sentinel_at(4), what="tick at T0+240")
    assert rid("ticker", "job", T0 * 1000 + 4 * MIN) not in await run_keys(aioflow_kit, "ticker")
    assert [s.name for s in await aioflow_kit.client.schedules("ticker")] == ["sentinel"]


async def test_concurrent_tickers_make_one_run_per_tick(aioflow_redis_url: str) -> None:
    flow = ticker()
    flow.schedule("s", every=60)
    clock = FakeClock(T0 + 30)
    async with Kit(aioflow_redis_url, clock=clock) as kit:
        await register(kit.redis, [flow])
        tickers = [Scheduler(kit.redis, ["ticker"], clock) for _ in range(5)]
        try:
            await asyncio.gather(*(t.tick() for t in tickers))
            for n in (1, 2, 3):
                clock.now = T0 + n * 60
                await asyncio.gather(*(t.tick() for t in tickers))
                assert sum(t.fired for t in tickers) == n
        finally:
            for t in tickers:
                await t.aclose()
        assert await run_keys(kit, "ticker") == {
            rid("ticker", "s", T0 * 1000 + n * MIN) for n in (1, 2, 3)
        }


async def test_http_and_cli(aioflow_redis_url: str) -> None:
    """GET /flow/{name} lists the schedules with their next tick; pause and resume
    over HTTP and with ``aioflow schedule``."""
    flow = ticker()
    flow.schedule("hourly", every=3600, data={"x": 1})
    flow.schedule("nightly", cron="30 2 * * *", timezone="Europe/Paris")
    redis = Redis.from_url(aioflow_redis_url)
    app = create_app(redis, flows=[flow])
    try:
        async with TestClient(TestServer(app)) as http:
            resp = await http.get("/flow/ticker")
            assert resp.status == 200
            doc = await resp.json()
            assert doc["name"] == "ticker" and "dag" in doc
            scheds = {s["name"]: s for s in doc["schedules"]}
            assert scheds["hourly"]["every"] == 3600 and scheds["hourly"]["data"] == {"x": 1}
            assert scheds["nightly"]["cron"] == "30 2 * * *"
            assert scheds["nightly"]["timezone"] == "Europe/Paris"
            assert scheds["hourly"]["next_tick"] % 3600 == 0
            assert not scheds["hourly"]["paused"]

            resp = await http.post("/flow/ticker/schedule/hourly/pause")
            assert resp.status == 200
            body = await resp.json()
            assert body["paused"] and body["next_tick"] is None
            doc = await (await http.get("/flow/ticker")).json()
            assert {s["name"]: s["paused"] for s in doc["schedules"]} == {
                "hourly": True,
                "nightly": False,
            }
            resp = await http.post("/flow/ticker/schedule/hourly/resume")
            assert resp.status == 200 and not (await resp.json())["paused"]

            resp = await http.post("/flow/ticker/schedule/nope/pause")
            assert resp.status == 404
            assert (await resp.json())["error"] == "unknown_schedule"
            resp = await http.post("/flow/ticker/schedule/hourly/explode")
            assert resp.status == 404
            resp = await http.post("/flow/absent/schedule/hourly/pause")
            assert (await resp.json())["error"] == "unknown_flow"

            code, out, err = await run_aioflow(
                "schedule", "pause", "ticker", "nightly", "--redis-url", aioflow_redis_url
            )
            assert code == 0, err
            assert out == "ticker nightly: paused\n"
            assert await redis.sismember(keys.paused_schedules("ticker"), "nightly")
            code, out, err = await run_aioflow(
                "schedule", "list", "ticker", "--redis-url", aioflow_redis_url
            )
            assert code == 0, err
            listed = [json.loads(line) for line in out.splitlines()]
            assert [(d["name"], d["paused"]) for d in listed] == [
                ("hourly", False),
                ("nightly", True),
            ]
            code, out, err = await run_aioflow(
                "schedule", "pause", "ticker", "nope", "--redis-url", aioflow_redis_url
            )
            assert code == 2 and "nope" in err
    finally:
        await redis.aclose()
