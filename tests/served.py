"""A real gateway on a loopback port with an in-process worker, on one test Redis."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

import aioflow
from aioflow.gateway.routes import create_app
from aioflow.store.redis_server import free_port
from tests.engine_helpers import Stack, running


@dataclass
class Served:
    """A gateway on a loopback port with an in-process worker, on one test Redis."""

    base: str
    stack: Stack
    app: web.Application


@contextlib.asynccontextmanager
async def served(
    flows: Sequence[aioflow.Flow],
    redis_url: str,
    *,
    middlewares: Sequence[Any] = (),
    **settings: Any,
) -> AsyncIterator[Served]:
    """Serve ``flows`` over HTTP on 127.0.0.1 (``middlewares`` run before the gateway's)."""
    async with running(flows, redis_url) as stack:
        app = create_app(
            stack.redis,
            flows=list(flows),
            settings=aioflow.Settings(redis_url=redis_url, **settings),
        )
        for i, m in enumerate(middlewares):
            app.middlewares.insert(i, m)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield Served(f"http://127.0.0.1:{port}", stack, app)
        finally:
            await runner.cleanup()
