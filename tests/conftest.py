"""Fixtures: a real redis-server for the session, a clean database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis as redis_py
import redis.asyncio as aioredis

from aioflow.redis_server import RedisServer
from tests.helpers import RedisFactory


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session (no persistence, for speed)."""
    server = RedisServer(dir=tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's server, emptied (FLUSHALL, SCRIPT FLUSH) before the test."""
    with redis_py.Redis.from_url(redis_server.url) as client:
        client.flushall()
        client.script_flush()
    return redis_server.url


@pytest.fixture(name="redis")
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client on the emptied session server, closed after the test."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[RedisFactory]:
    """Starts extra, independent redis-servers (e.g. to kill them); all stopped at teardown.

    ``redis_factory(**kwargs)`` takes RedisServer's arguments; ``dir`` defaults to a
    fresh directory under the test's tmp_path.
    """
    factory = RedisFactory(tmp_path / "redis-servers")
    try:
        yield factory
    finally:
        factory.close()
