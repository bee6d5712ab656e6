"""Tracebacks over HTTP: absent from ``aioflow serve`` answers, present in
``aioflow dev`` ones (both started as real processes on the test's Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from aioflow.store.redis_server import free_port
from tests.helpers import ROOT, wait_until


@contextlib.asynccontextmanager
async def command(name: str, redis_url: str) -> AsyncIterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOFLOW_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aioflow", name, "tests.apps.boom_app:app",
        "--redis-url", redis_url, "--port", str(port),
        cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _failed_answer(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async def up() -> bool:
        try:
            async with session.get(f"{base}/flows") as resp:
                return resp.status == 200 and "boom" in await resp.text()
        except aiohttp.ClientError:
            return False

    await wait_until(up, timeout=30, what=f"{base} serving boom")
    async with session.post(f"{base}/flow/boom?wait=10", json=1) as resp:
        assert resp.status == 500, await resp.text()
        doc: dict[str, Any] = await resp.json()
    assert doc["error"] == "run_failed" and doc["message"] == "on purpose"
    return doc


@pytest.mark.slow
async def test_serve_hides_tracebacks_and_dev_shows_them(redis_url: str) -> None:
    async with (
        command("dev", redis_url) as dev,  # its worker runs the runs of both gateways
        command("serve", redis_url) as serve,
        aiohttp.ClientSession() as session,
    ):
        shown, hidden = await asyncio.gather(
            _failed_answer(session, dev), _failed_answer(session, serve)
        )
    assert "Traceback" in shown["traceback"] and "on purpose" in shown["traceback"]
    assert "traceback" not in hidden
