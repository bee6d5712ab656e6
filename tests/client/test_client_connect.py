"""A client that just connects: ``Client()`` finds ``aioflow dev``'s Redis, and a
``Flow`` object submitted to a Redis that never saw it registers it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import aioflow
from aioflow.app import connect


def squares() -> aioflow.Flow:
    flow = aioflow.Flow("late-squares")

    @flow.node
    async def square(x: int) -> int:
        return x * x

    return flow


async def test_client_uses_the_dev_url_file(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIOFLOW_REDIS_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(aioflow.ConfigError, match=r"\.aioflow/redis\.url"):
        aioflow.Client()
    (tmp_path / ".aioflow").mkdir()
    (tmp_path / ".aioflow" / "redis.url").write_text(redis_url + "\n")
    async with aioflow.Client() as client:
        await client.redis.set("probe", "1")
    redis = connect(redis_url)
    try:
        assert await redis.get("probe") == b"1"  # the file's server, not a default port
    finally:
        await redis.aclose()
    monkeypatch.setenv("AIOFLOW_REDIS_URL", "redis://127.0.0.1:1/0")
    async with aioflow.Client() as client:  # the environment wins over the file
        assert client.redis.connection_pool.connection_kwargs["port"] == 1


async def test_flow_object_submit_registers_it_and_runs_once_a_worker_starts(
    any_redis_url: str,
) -> None:
    redis_url = any_redis_url
    flow = squares()
    async with aioflow.Client(redis_url) as client:
        with pytest.raises(aioflow.UnknownFlow):
            await client.submit(flow.name, 3)  # by name: nothing to register
        rid = await client.submit(flow, 4)  # nothing registered: the object is
        assert await client.engine.redis.hexists("af:flows", flow.name)
        with pytest.raises(aioflow.ResultTimeout):
            await client.result(rid, timeout=0.05)  # no worker yet: it waits
        redis = connect(redis_url)
        worker = aioflow.Worker([flow], redis, settings=aioflow.Settings(redis_url=redis_url))
        task = asyncio.create_task(worker.run())
        try:
            assert await client.result(rid, timeout=10) == 16
            assert await client.execute(squares(), 5, timeout=10) == 25
        finally:
            worker.stop()
            await task
            await redis.aclose()
