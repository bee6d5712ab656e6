"""A run's failure and a dead letter are logged at WARNING, naming the run by the full
id that ``aioflow run state`` accepts, with the vertex, error and attempts."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from redis.asyncio import Redis

import aioflow
from aioflow.engine.engine import register
from aioflow.store import keys
from tests.engine_helpers import running
from tests.helpers import wait_until

T = 10.0


def _warnings(caplog: pytest.LogCaptureFixture, needle: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "aioflow.worker" and r.levelno == logging.WARNING and needle in r.getMessage()
    ]


async def test_a_failed_run_is_logged_with_its_full_id(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    flow = aioflow.Flow("logfail")

    @flow.node
    async def first(x: int) -> int:
        return x

    @flow.node(after=first, retries=aioflow.RetryPolicy(retries=1, backoff=0.01))
    async def charge(x: int) -> int:
        raise ValueError(f"card {x} declined")

    caplog.set_level(logging.INFO, logger="aioflow")
    async with running([flow], redis_url) as stack:
        rid = await stack.client.submit(flow, 7)
        with pytest.raises(aioflow.RunFailed):
            await stack.client.result(rid, timeout=T)

        await wait_until(lambda: bool(_warnings(caplog, "failed:")), timeout=T, what="the log")
    [rec] = _warnings(caplog, "failed:")
    assert rec.getMessage() == (
        f"run {rid} failed: vertex charge raised ValueError: card 7 declined (attempt 2)"
    )
    extra: Any = rec.__dict__
    assert (extra["run_id"], extra["vertex"], extra["flow"]) == (rid, "charge", "logfail")
    # the retry before it names the run by its full id too
    retried = f"run {rid} vertex charge attempt 1 failed"
    assert any(retried in r.getMessage() for r in caplog.records)
    # the id in the log is one the client (and so `aioflow run state`) accepts
    async with aioflow.Client(redis_url) as client:
        assert (await client.state(extra["run_id"])).status is aioflow.Status.FAILED


async def test_a_dead_letter_is_logged_with_its_run(
    redis_url: str, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    flow = aioflow.Flow("logdlq")

    @flow.node
    async def poison(x: int) -> int:
        return x

    await register(redis, [flow])
    async with aioflow.Client(redis_url) as client:
        rid = await client.submit(flow, 1)
    # a ghost consumer takes the message and is redelivered it twice: 3 deliveries
    stream = keys.stream("logdlq", 0)
    resp: Any = await redis.xreadgroup("workers", "ghost", {stream: ">"}, count=1)
    [(mid, _)] = resp[0][1]
    for _ in range(2):
        await redis.xclaim(stream, "workers", "ghost", 0, [mid])
    caplog.set_level(logging.INFO, logger="aioflow")
    async with running([flow], redis_url, max_deliveries=2, visibility_timeout=0.3) as stack:
        with pytest.raises(aioflow.RunFailed):
            await stack.client.result(rid, timeout=T)
        await wait_until(lambda: bool(_warnings(caplog, "dead-lettered")), timeout=T, what="log")
    [rec] = _warnings(caplog, "dead-lettered")
    assert rec.getMessage() == (
        f"vertex poison of run {rid} dead-lettered: message {mid.decode()} delivered more "
        "than max_deliveries=2 times: the run failed"
    )
    assert rec.__dict__["run_id"] == rid
