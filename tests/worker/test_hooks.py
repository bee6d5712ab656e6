"""Flow-level hooks and callbacks: run once per run, outcome recorded on the run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import aioflow
from aioflow.store.redis_server import free_port
from tests.engine_helpers import running
from tests.helpers import wait_until


def make_flow(seen: list[tuple[str, Any]]) -> aioflow.Flow:
    async def on_failure(error: aioflow.RunFailed, ctx: aioflow.Context) -> None:
        seen.append(("on_failure", error.error_type))

    async def finally_(status: aioflow.Status, ctx: aioflow.Context) -> None:
        seen.append(("finally", status.value))

    flow = aioflow.Flow("hooked", on_failure=on_failure, finally_=finally_)

    @flow.node
    async def work(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x * 2

    return flow


async def test_hooks_run_once_per_run(redis_url: str) -> None:
    seen: list[tuple[str, Any]] = []
    async with running([make_flow(seen)], redis_url) as s:
        assert await s.client.execute("hooked", 2, timeout=10) == 4
        with pytest.raises(aioflow.RunFailed):
            await s.client.execute("hooked", -1, timeout=10)
        await wait_until(lambda: len(seen) == 3, what="three hook calls")
    assert seen.count(("finally", "completed")) == 1
    assert seen.count(("finally", "failed")) == 1
    assert seen.count(("on_failure", "ValueError")) == 1


async def test_callback_delivered_and_failure_recorded(redis_url: str) -> None:
    got: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        got.append(await request.json())
        arrived.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/cb", receive)
    async with (
        TestServer(app) as server,
        running([make_flow([])], redis_url, callback_allow_private=True) as s,
    ):
        rid = await s.client.submit("hooked", 21, callback_url=str(server.make_url("/cb")))
        assert await s.client.result(rid, timeout=10) == 42
        await asyncio.wait_for(arrived.wait(), 10)
        assert got == [{"run_id": rid, "flow": "hooked", "status": "completed", "result": 42}]

        async def recorded(run_id: str) -> bool:
            return (await s.client.state(run_id)).callback is not None

        await wait_until(lambda: recorded(rid), what="callback outcome recorded")
        assert (await s.client.state(rid)).callback == {
            "url": str(server.make_url("/cb")),
            "delivered": True,
            "attempts": 1,
            "status_code": 200,
        }
        # nobody listens on this port: the failure is recorded on the run, not lost
        dead = f"http://127.0.0.1:{free_port()}/cb"
        rid2 = await s.client.submit("hooked", 1, callback_url=dead)
        await wait_until(lambda: recorded(rid2), timeout=20, what="failed callback recorded")
        cb = (await s.client.state(rid2)).callback
        assert cb is not None and cb["delivered"] is False and cb["attempts"] == 3
        assert "error" in cb


async def test_invalid_callback_url_rejected(redis_url: str) -> None:
    async with running([make_flow([])], redis_url) as s:
        with pytest.raises(aioflow.InvalidCallbackUrl):
            await s.client.submit("hooked", 1, callback_url="ftp://x")


async def test_hook_errors_are_recorded_on_the_run(redis_url: str) -> None:
    def broken(status: aioflow.Status, ctx: aioflow.Context) -> None:
        raise RuntimeError("finally broke")

    flow = aioflow.Flow("brokenhook", finally_=broken)

    @flow.node
    async def work(x: int) -> int:
        return x

    async with running([flow], redis_url) as s:
        rid = await s.client.submit("brokenhook", 3)
        assert await s.client.result(rid, timeout=10) == 3

        async def recorded() -> bool:
            return (await s.client.state(rid)).hook_errors is not None

        await wait_until(recorded, what="hook error recorded")
        errors = (await s.client.state(rid)).hook_errors
        assert errors == [{"hook": "finally_", "type": "RuntimeError", "message": "finally broke"}]
