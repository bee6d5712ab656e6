"""Failure semantics: retries and their backoff, timeouts, node on_failure hooks."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

import aioflow
from aioflow.app import connect
from aioflow.engine.engine import Engine
from aioflow.store import keys
from tests.engine_helpers import running
from tests.helpers import wait_until

T = 10.0


# -- RetryPolicy --------------------------------------------------------------------------


def test_delay_without_jitter_is_exponential_and_capped() -> None:
    p = aioflow.RetryPolicy(retries=6, backoff=0.5, multiplier=3.0, max_delay=10.0, jitter=0.0)
    assert [p.delay(n) for n in range(1, 7)] == [0.5, 1.5, 4.5, 10.0, 10.0, 10.0]
    assert aioflow.RetryPolicy(backoff=2.0, multiplier=1.0, jitter=0).delay(5) == 2.0
    assert aioflow.RetryPolicy(backoff=0.0, jitter=0).delay(3) == 0.0


def test_delay_with_seeded_random_is_exact() -> None:
    p = aioflow.RetryPolicy(retries=6, backoff=1.0, multiplier=2.0, max_delay=30.0, jitter=0.5)
    rng = random.Random(1234)
    # base 1, 2, 4, 8, 16, 30 (capped) times (1 - 0.5 * the seeded draws)
    assert [p.delay(n, rng) for n in range(1, 7)] == [
        0.5167732321539307,
        1.5592674008246474,
        3.985017059882826,
        4.356096150203504,
        8.485848021089888,
        21.266586404115763,
    ]


@pytest.mark.parametrize("jitter", [0.0, 0.2, 0.5, 1.0])
def test_delay_stays_within_jitter_bounds(jitter: float) -> None:
    p = aioflow.RetryPolicy(backoff=0.1, multiplier=2.0, max_delay=5.0, jitter=jitter)
    rng = random.Random(7)
    for attempt in range(1, 12):
        base = min(5.0, 0.1 * 2.0 ** (attempt - 1))
        for _ in range(200):
            assert base * (1 - jitter) <= p.delay(attempt, rng) <= base


def test_should_retry_counts_attempts_and_filters_types() -> None:
    p = aioflow.RetryPolicy(retries=2, retry_on=(ConnectionError, KeyError))
    assert p.should_retry(ConnectionError(), 1)
    assert p.should_retry(ConnectionResetError(), 2)  # a subclass
    assert p.should_retry(KeyError("k"), 2)
    assert not p.should_retry(ConnectionError(), 3)  # the 3rd attempt was the last
    assert not p.should_retry(ValueError(), 1)
    assert not aioflow.RetryPolicy().should_retry(RuntimeError(), 1)  # retries=0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retries": -1},
        {"backoff": -0.1},
        {"max_delay": -1.0},
        {"multiplier": 0.5},
        {"jitter": -0.1},
        {"jitter": 1.5},
    ],
)
def test_invalid_policy(kwargs: dict[str, Any]) -> None:
    with pytest.raises(aioflow.DefinitionError):
        aioflow.RetryPolicy(**kwargs)


# -- retries on the engine ----------------------------------------------------------------


async def test_fails_twice_then_succeeds_on_the_third_attempt(any_redis_url: str) -> None:
    flow = aioflow.Flow("flaky")
    attempts: list[int] = []

    @flow.node(retries=2)
    async def flaky(x: int, ctx: aioflow.Context) -> dict[str, int]:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} failed")
        return {"x": x, "attempt": ctx.attempt}

    @flow.node(after=flaky)
    async def after(d: dict[str, int]) -> dict[str, int]:
        return d

    async with running([flow], any_redis_url) as s:
        rid = await s.client.submit("flaky", 5)
        assert await s.client.result(rid, timeout=T) == {"x": 5, "attempt": 3}
        assert attempts == [1, 2, 3]
        st = await s.client.state(rid)
        assert st.vertices["flaky"].attempts == 3
        assert st.vertices["flaky"].status == "completed"
        assert st.vertices["after"].attempts == 1
        assert await s.redis.zcard(f"{keys.tag('flaky', 0)}:z") == 0


async def test_retry_on_filters_exception_types(redis_url: str) -> None:
    flow = aioflow.Flow("typed")
    calls: list[str] = []

    @flow.node(retries=aioflow.RetryPolicy(retries=3, retry_on=(ConnectionError,)))
    async def work(kind: str, ctx: aioflow.Context) -> int:
        calls.append(kind)
        if kind == "value":
            raise ValueError("not retryable")
        if ctx.attempt < 3:
            raise ConnectionRefusedError("retryable")
        return ctx.attempt

    async with running([flow], redis_url) as s:
        with pytest.raises(aioflow.RunFailed) as info:
            await s.client.execute("typed", "value", timeout=T)
        err = info.value
        assert (err.vertex, err.error_type, err.attempts) == ("work", "ValueError", 1)
        assert "not retryable" in err.message and "ValueError" in err.traceback
        assert calls == ["value"]
        assert await s.client.execute("typed", "conn", timeout=T) == 3
        assert calls == ["value", "conn", "conn", "conn"]


async def test_retries_exhausted_fail_with_the_last_error(redis_url: str) -> None:
    flow = aioflow.Flow("hopeless")
    attempts: list[int] = []

    @flow.node(retries=2)
    async def work(x: int, ctx: aioflow.Context) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError(f"attempt {ctx.attempt}")

    async with running([flow], redis_url) as s:
        rid = await s.client.submit("hopeless", 1)
        with pytest.raises(aioflow.RunFailed) as info:
            await s.client.result(rid, timeout=T)
        assert (info.value.error_type, info.value.message, info.value.attempts) == (
            "RuntimeError",
            "attempt 3",
            3,
        )
        assert attempts == [1, 2, 3]
        st = await s.client.state(rid)
        assert st.status is aioflow.Status.FAILED
        assert st.vertices["work"].status == "failed" and st.vertices["work"].attempts == 3


class FakeClock:
    """A time source the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def worker_with_clock(
    flows: Sequence[aioflow.Flow], url: str, clock: FakeClock
) -> AsyncIterator[tuple[aioflow.Client, Redis]]:
    redis = connect(url)
    w = aioflow.Worker(
        flows, redis, settings=aioflow.Settings(redis_url=url, concurrency=8), clock=clock
    )
    await w.prepare()
    task = asyncio.create_task(w.run())
    client = aioflow.Client(url)
    try:
        yield client, redis
    finally:
        w.stop()
        await task
        await client.close()
        await redis.aclose()


async def delayed(redis: Redis, flow: str, key: str) -> list[int]:
    """Due times (ms) of the delayed messages of run ``key``."""
    rows: Any = await redis.zrange(f"{keys.tag(flow, 0)}:z", 0, -1, withscores=True)
    return [int(score) for member, score in rows if member.startswith(key.encode() + b"\n")]


async def test_backoff_due_times_follow_the_injected_clock(redis_url: str) -> None:
    flow = aioflow.Flow("clocked")
    attempts: list[tuple[str, int]] = []
    policy = aioflow.RetryPolicy(retries=2, backoff=2.0, multiplier=3.0, jitter=0.0)

    @flow.node(retries=policy)
    async def work(x: str, ctx: aioflow.Context) -> str:
        attempts.append((x, ctx.attempt))
        if x == "sentinel":
            return "tick"
        if ctx.attempt < 3:
            raise ConnectionError("not yet")
        return f"done on attempt {ctx.attempt}"

    t0 = 1_000_000.0
    clock = FakeClock(t0)
    async with worker_with_clock([flow], redis_url, clock) as (client, redis):
        rid = await client.submit("clocked", "main")
        key = keys.RunId.parse(rid).key

        async def scheduled() -> bool:
            return bool(await delayed(redis, "clocked", key))

        await wait_until(scheduled, what="first retry scheduled")
        assert await delayed(redis, "clocked", key) == [int((t0 + 2.0) * 1000)]
        assert (await client.state(rid)).vertices["work"].status == "retrying"

        # A sentinel run due at t0+1 proves the mover ran with the clock at t0+1.5,
        # and that pass left the retry (due t0+2) alone.
        engine = Engine(redis, clock=clock)
        try:
            sentinel, _ = await engine.submit("clocked", "sentinel", delay=1.0)
        finally:
            await engine.close()
        clock.now = t0 + 1.5
        assert await client.result(str(sentinel), timeout=T) == "tick"
        assert attempts == [("main", 1), ("sentinel", 1)]
        assert await delayed(redis, "clocked", key) == [int((t0 + 2.0) * 1000)]

        clock.now = t0 + 2.0  # due: the second attempt runs (and fails at t0+2)
        await wait_until(lambda: ("main", 2) in attempts, what="second attempt")
        await wait_until(scheduled, what="second retry scheduled")
        assert await delayed(redis, "clocked", key) == [int((t0 + 2.0 + 6.0) * 1000)]

        clock.now = t0 + 8.0
        assert await client.result(rid, timeout=T) == "done on attempt 3"
        assert [a for x, a in attempts if x == "main"] == [1, 2, 3]
        assert await delayed(redis, "clocked", key) == []


async def test_jittered_due_time_within_bounds(redis_url: str) -> None:
    flow = aioflow.Flow("jittered")
    policy = aioflow.RetryPolicy(retries=1, backoff=4.0, jitter=0.5)

    @flow.node(retries=policy)
    async def work(x: int, ctx: aioflow.Context) -> int:
        if ctx.attempt == 1:
            raise ConnectionError("first")
        return ctx.attempt

    t0 = 2_000_000.0
    clock = FakeClock(t0)
    async with worker_with_clock([flow], redis_url, clock) as (client, redis):
        rids = [await client.submit("jittered", i) for i in range(5)]
        dues: list[int] = []
        for rid in rids:
            key = keys.RunId.parse(rid).key

            async def scheduled(key: str = key) -> bool:
                return bool(await delayed(redis, "jittered", key))

            await wait_until(scheduled, what="retry scheduled")
            dues += await delayed(redis, "jittered", key)
        assert all(int((t0 + 2.0) * 1000) <= d <= int((t0 + 4.0) * 1000) for d in dues), dues
        clock.now = t0 + 4.0
        assert [await client.result(r, timeout=T) for r in rids] == [2] * 5


# -- timeouts -----------------------------------------------------------------------------


async def test_timeout_then_retry_succeeds(any_redis_url: str) -> None:
    flow = aioflow.Flow("timed")
    cancelled: list[int] = []

    @flow.node(retries=1, timeout=0.2)
    async def work(x: int, ctx: aioflow.Context) -> dict[str, int]:
        if ctx.attempt == 1:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(ctx.attempt)
                raise
        return {"x": x, "attempt": ctx.attempt}

    async with running([flow], any_redis_url) as s:
        rid = await s.client.submit("timed", 7)
        assert await s.client.result(rid, timeout=T) == {"x": 7, "attempt": 2}
        assert cancelled == [1]
        assert (await s.client.state(rid)).vertices["work"].attempts == 2


async def test_timeout_exhausted_fails_with_node_timeout(any_redis_url: str) -> None:
    flow = aioflow.Flow("slowpoke")
    started: list[int] = []

    @flow.node(retries=2, timeout=0.2)
    async def work(x: int, ctx: aioflow.Context) -> int:
        started.append(ctx.attempt)
        await asyncio.sleep(30)
        return x

    @flow.node(after=work)
    async def never(x: int) -> int:
        raise AssertionError("must not run")

    async with running([flow], any_redis_url) as s:
        rid = await s.client.submit("slowpoke", 1)
        with pytest.raises(aioflow.RunFailed) as info:
            await s.client.result(rid, timeout=T)
        err = info.value
        assert (err.vertex, err.error_type, err.attempts) == ("work", "NodeTimeout", 3)
        assert "0.2" in err.message
        assert started == [1, 2, 3]
        st = await s.client.state(rid)
        assert st.vertices["work"].status == "failed" and "never" not in st.vertices


async def test_a_node_that_lets_its_timeout_go_by_still_times_out(redis_url: str) -> None:
    """The cancel of a timeout can be lost (on Python 3.11, inside asyncio.wait_for,
    which redis-py's commands use) or swallowed by the node: a node that returns
    after its timeout has timed out all the same, and its late result is not kept."""
    flow = aioflow.Flow("latecomer")

    @flow.node(timeout=0.2)
    async def work(x: int) -> int:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        return x

    async with running([flow], redis_url) as s:
        with pytest.raises(aioflow.RunFailed) as info:
            await s.client.execute("latecomer", 1, timeout=T)
        assert info.value.error_type == "NodeTimeout"
        assert (await s.client.state(info.value.run_id)).vertices["work"].status == "failed"


async def test_timeout_error_raised_by_the_node_itself_is_not_a_node_timeout(
    redis_url: str,
) -> None:
    """A node with a generous ``timeout`` that raises its own TimeoutError (a client
    library's) within the limit failed with that error, not with NodeTimeout."""
    flow = aioflow.Flow("owntimeout")

    @flow.node(timeout=30.0)
    async def work(x: int) -> int:
        raise TimeoutError("upstream service timed out")

    async with running([flow], redis_url) as s:
        with pytest.raises(aioflow.RunFailed) as info:
            await s.client.execute("owntimeout", 1, timeout=T)
        assert info.value.error_type == "TimeoutError"
        assert info.value.message == "upstream service timed out"


# -- node on_failure ----------------------------------------------------------------------


async def test_on_failure_value_replaces_the_output(redis_url: str) -> None:
    flow = aioflow.Flow("rescued")
    calls: list[int] = []
    hooked: list[tuple[str, Any, str, int]] = []

    def recover(error: Exception, data: Any, ctx: aioflow.Context) -> dict[str, Any]:
        hooked.append((type(error).__name__, data, ctx.vertex, ctx.attempt))
        return {"fallback": data}

    async def recover_async(error: Exception, data: Any, ctx: aioflow.Context) -> str:
        return f"async fallback for {error}"

    @flow.node(retries=1, on_failure=recover)
    async def fragile(x: int, ctx: aioflow.Context) -> dict[str, Any]:
        calls.append(ctx.attempt)
        raise ValueError("broken")

    @flow.node(on_failure=recover_async)
    async def also_fragile(x: int) -> str:
        raise KeyError("k")

    @flow.node(after=[fragile, also_fragile])
    async def downstream(d: dict[str, Any]) -> dict[str, Any]:
        return {"got": d}

    async with running([flow], redis_url) as s:
        rid = await s.client.submit("rescued", 3)
        assert await s.client.result(rid, timeout=T) == {
            "got": {"fragile": {"fallback": 3}, "also_fragile": "async fallback for 'k'"}
        }
        # the hook runs once, after the retries are exhausted
        assert calls == [1, 2]
        assert hooked == [("ValueError", 3, "fragile", 2)]
        st = await s.client.state(rid)
        assert st.vertices["fragile"].status == "completed"
        assert st.vertices["downstream"].status == "completed"


async def test_on_failure_that_raises_lets_the_vertex_fail(redis_url: str) -> None:
    flow = aioflow.Flow("unrescued")
    ran: list[str] = []

    def recover(error: Exception, data: Any, ctx: aioflow.Context) -> Any:
        ran.append("hook")
        raise RuntimeError("the hook broke too")

    @flow.node(on_failure=recover)
    async def fragile(x: int) -> int:
        ran.append("fragile")
        raise ValueError("broken")

    @flow.node(after=fragile)
    async def downstream(x: int) -> int:
        ran.append("downstream")
        return x

    async with running([flow], redis_url) as s:
        with pytest.raises(aioflow.RunFailed) as info:
            await s.client.execute("unrescued", 1, timeout=T)
        err = info.value
        assert (err.vertex, err.error_type, err.message, err.attempts) == (
            "fragile",
            "ValueError",
            "broken",
            1,
        )
        assert ran == ["fragile", "hook"]


async def test_cancelled_error_from_inside_the_node_is_a_failure_not_a_stop(
    redis_url: str,
) -> None:
    """A node can see CancelledError without its task being cancelled (it awaited a
    future someone else cancelled). The run was not stopped: the vertex must fail
    (or retry), never be acked silently and leave its run running forever."""
    flow = aioflow.Flow("innercancel")
    attempts: list[int] = []

    @flow.node(retries=1)
    async def work(x: int, ctx: aioflow.Context) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            fut.cancel()
            return await fut
        return x

    async with running([flow], redis_url, grace=0.5) as s:
        rid = await s.client.submit("innercancel", 4)
        try:
            result = await s.client.result(rid, timeout=3)
        except aioflow.ResultTimeout:
            st = await s.client.state(rid)
            raise AssertionError(f"run left {st.status.value}: {st.vertices}") from None
        assert result == 4
        assert attempts == [1, 2]
