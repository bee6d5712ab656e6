"""A diamond for the OTLP test: ``b`` fails its first attempt when asked to, ``d``
fails when asked to. Loaded by tests/test_otlp.py as ``tests.apps.traced_app:app``."""

from __future__ import annotations

import asyncio
from typing import Any

import aioflow

traced = aioflow.Flow("traced")


@traced.node
async def a(data: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0.02)  # long enough that both single-slot workers get work
    return data


@traced.node(after=a, retries=aioflow.RetryPolicy(retries=1, backoff=0.01, jitter=0))
async def b(data: dict[str, Any], ctx: aioflow.Context) -> int:
    await asyncio.sleep(0.02)
    if data.get("flaky") and ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return 1


@traced.node(after=a)
async def c(data: dict[str, Any]) -> int:
    await asyncio.sleep(0.02)
    return -2 if data.get("fail") else 2


@traced.node(after=[b, c])
async def d(data: dict[str, int]) -> int:
    if data["c"] < 0:
        raise ValueError("asked to fail")
    return data["b"] + data["c"]


app = aioflow.App(flows=[traced])
