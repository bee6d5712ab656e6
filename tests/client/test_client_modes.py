"""The client's behaviour, the same in both modes: straight to Redis, and over HTTP
through a real gateway (``aioflow.Client("http://...")``), with a worker on a test Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import aioflow
from aioflow.store.redis_server import free_port
from tests.helpers import wait_until
from tests.served import Served, served

T = 10.0


class Gate:
    event: asyncio.Event | None = None


def make_flows() -> list[aioflow.Flow]:
    calc = aioflow.Flow("calc")

    @calc.node
    async def double(x: int) -> int:
        return x * 2

    @calc.node(after=double)
    async def inc(x: int) -> int:
        return x + 1

    raw = aioflow.Flow("raw")

    @raw.node
    async def flip(b: bytes) -> bytes:
        return b[::-1]

    boom = aioflow.Flow("boom")

    @boom.node
    async def explode(x: Any) -> None:
        raise ValueError(f"bad input {x!r}")

    hold = aioflow.Flow("hold")

    @hold.node
    async def wait(x: Any, ctx: aioflow.Context) -> Any:
        assert Gate.event is not None
        await Gate.event.wait()
        return {"x": x, "options": ctx.options}

    return [calc, raw, boom, hold]


@pytest.fixture(params=["redis", "http"])
async def env(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Any]:
    """(client, served) for the mode; the gate of ``hold`` starts closed."""
    Gate.event = asyncio.Event()
    async with served(make_flows(), redis_url) as srv:
        url = srv.base if request.param == "http" else redis_url
        async with aioflow.Client(url) as client:
            yield client, srv
        Gate.event.set()


async def test_execute_and_submit_then_result(env: tuple[aioflow.Client, Served]) -> None:
    client, _ = env
    assert await client.execute("calc", 20, timeout=T) == 41
    rid = await client.submit("calc", 1)
    assert rid.startswith("calc")
    assert await client.result(rid, timeout=T) == 3
    assert await client.execute("raw", b"\x00abc", timeout=T) == b"cba\x00"


async def test_failed_run_raises_run_failed(env: tuple[aioflow.Client, Served]) -> None:
    client, _ = env
    with pytest.raises(aioflow.RunFailed) as ei:
        await client.execute("boom", 7, timeout=T)
    assert ei.value.vertex == "explode"
    assert ei.value.error_type == "ValueError"
    assert ei.value.message == "bad input 7"
    assert ei.value.attempts == 1
    rid = await client.submit("boom", 8)
    with pytest.raises(aioflow.RunFailed, match="bad input 8"):
        await client.result(rid, timeout=T)
    st = await client.state(rid)
    assert st.status is aioflow.Status.FAILED
    assert st.error is not None and st.error["vertex"] == "explode"


async def test_unknown_flow_and_run(env: tuple[aioflow.Client, Served]) -> None:
    client, _ = env
    with pytest.raises(aioflow.UnknownFlow):
        await client.submit("nope", 1)
    with pytest.raises(aioflow.UnknownFlow):
        await client.execute("nope", 1, timeout=1)
    rid = await client.submit("calc", 1)
    await client.result(rid, timeout=T)
    missing = rid[:-3] + ("aaa" if not rid.endswith("aaa") else "bbb")
    with pytest.raises(aioflow.RunNotFound):
        await client.state(missing)
    with pytest.raises(aioflow.InvalidRunId):
        await client.state("not a run id")


async def test_timeout_pause_resume_stop(env: tuple[aioflow.Client, Served]) -> None:
    client, _ = env
    with pytest.raises(aioflow.ResultTimeout):
        await client.execute("hold", 1, timeout=0.2)
    rid = await client.submit("hold", 2, options={"tag": ["a", "b"]})
    with pytest.raises(aioflow.ResultTimeout):
        await client.result(rid, timeout=0.1)
    assert await client.pause(rid) is aioflow.Status.PAUSED
    with pytest.raises(aioflow.InvalidTransition):
        await client.pause(rid)
    assert await client.resume(rid) is aioflow.Status.RUNNING
    assert Gate.event is not None
    Gate.event.set()
    assert await client.result(rid, timeout=T) == {"x": 2, "options": {"tag": ["a", "b"]}}

    Gate.event.clear()
    rid = await client.submit("hold", 3)

    async def running() -> bool:
        return (await client.state(rid)).vertices.get("wait") is not None

    await wait_until(running, timeout=T, what="hold running")
    assert await client.stop(rid) is aioflow.Status.STOPPED
    with pytest.raises(aioflow.RunStopped):
        await client.result(rid, timeout=T)


async def test_state_runs_and_caller_chosen_ids(env: tuple[aioflow.Client, Served]) -> None:
    client, srv = env
    a = await client.submit("calc", 1, run_id="order-1")
    assert await client.submit("calc", 99, run_id="order-1") == a  # not a second run
    assert await client.result(a, timeout=T) == 3
    st = await client.state(a)
    assert st.status is aioflow.Status.COMPLETED
    assert st.result == 3
    assert {k: v.attempts for k, v in st.vertices.items()} == {"double": 1, "inc": 1}
    assert st.created is not None and st.ended is not None and st.ended >= st.created
    direct = await srv.stack.client.state(a)  # read straight from Redis
    assert (st.vertices, st.created, st.started, st.ended) == (
        direct.vertices,
        direct.created,
        direct.started,
        direct.ended,
    )
    b = await client.submit("boom", 0)
    with pytest.raises(aioflow.RunFailed):
        await client.result(b, timeout=T)
    runs, cursor = await client.runs("calc")
    assert [r.run_id for r in runs] == [a] and cursor is None
    failed, _ = await client.runs("boom", status="failed")
    assert [r.run_id for r in failed] == [b]
    assert (await client.runs("boom", status=aioflow.Status.COMPLETED))[0] == []


@pytest.mark.parametrize("mode", ["redis", "http"])
async def test_unreachable_is_redis_unavailable(mode: str) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://127.0.0.1:{port}" if mode == "redis" else f"http://127.0.0.1:{port}"
    async with aioflow.Client(url) as client:
        with pytest.raises(aioflow.RedisUnavailable) as ei:
            await client.submit("calc", 1)
    if mode == "http":
        assert isinstance(ei.value, aioflow.GatewayUnavailable)


async def test_http_client_sends_its_token(redis_url: str) -> None:
    Gate.event = asyncio.Event()
    async with served(make_flows(), redis_url, api_tokens="run:t0k") as srv:
        async with aioflow.Client(srv.base, token="t0k") as client:
            assert await client.execute("calc", 1, timeout=T) == 3
        async with aioflow.Client(srv.base) as client:
            with pytest.raises(aioflow.Unauthorized) as ei:
                await client.submit("calc", 1)
            assert ei.value.reason == "missing"
        async with aioflow.Client(srv.base, token="t0k") as client:
            with pytest.raises(aioflow.Forbidden):  # a run token cannot stop runs
                await client.stop("calc.0.x")
