"""A started :class:`Backend` on the test's Redis (one server or the cluster)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from aioflow.app import connect
from aioflow.store.topology import Backend


@pytest.fixture
async def backend(any_redis_url: str) -> AsyncIterator[Backend]:
    b = Backend(connect(any_redis_url))
    await b.start()
    try:
        yield b
    finally:
        await b.aclose()
        await b.given.aclose()
