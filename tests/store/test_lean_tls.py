"""The lean (hot-path) connection over TLS (``rediss://`` with a CA and a client
certificate) and over a unix socket, against redis-servers the test starts: no
fallback to redis-py's slower path, and whole runs go through them."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

import aioflow
from aioflow.app import connect
from aioflow.store.conn import Lean
from aioflow.store.redis_server import free_port
from aioflow.store.topology import Router, lean
from tests.engine_helpers import running
from tests.helpers import RedisFactory, make_certs

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture
def tls_url(redis_factory: RedisFactory, tmp_path: Path) -> str:
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(certs)
    tls_port = free_port()
    redis_factory(
        appendonly=False,
        extra_args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(certs / "server.crt"),
            "--tls-key-file", str(certs / "server.key"),
            "--tls-ca-cert-file", str(certs / "ca.crt"),
            "--tls-auth-clients", "yes",
        ],
    )  # fmt: skip
    return (
        f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certs / 'ca.crt'}"
        f"&ssl_certfile={certs / 'client.crt'}&ssl_keyfile={certs / 'client.key'}"
    )


@pytest.fixture
def unix_url(redis_factory: RedisFactory) -> Iterator[str]:
    d = Path(tempfile.mkdtemp(prefix="af-", dir="/tmp"))  # a socket path has ~100 chars at most
    try:
        sock = d / "redis.sock"
        redis_factory(
            appendonly=False, extra_args=["--unixsocket", str(sock), "--unixsocketperm", "700"]
        )
        yield f"unix://{sock}?db=2"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def make_flow() -> aioflow.Flow:
    flow = aioflow.Flow("chain")

    @flow.node
    async def a(x: int) -> int:
        return x + 1

    @flow.node(after=a)
    async def b(x: int) -> int:
        return x * 10

    return flow


async def _runs_on_the_lean_path(url: str) -> Lean:
    redis = connect(url)
    fast = lean(redis)
    try:
        assert isinstance(fast, Router), fast  # not the redis-py fallback
        assert await fast.execute("PING") == b"PONG"
        async with running([make_flow()], url) as s:
            assert isinstance(s.workers[0].fast, Router)
            assert isinstance(s.client.engine.fast, Router)
            assert await s.client.execute("chain", 4, timeout=10) == 50
            # a ?wait-style result wait goes through the lean subscriber too
            rid = await s.client.submit("chain", 1)
            assert await s.client.result(rid, timeout=10) == 20
        return fast.lean_template()
    finally:
        await fast.aclose()
        await redis.aclose()


async def test_tls_lean_connection(tls_url: str) -> None:
    fast = await _runs_on_the_lean_path(tls_url)
    assert fast.endpoint.ssl is not None and fast.endpoint.path is None
    # the client certificate is what the server demands: without it, no connection
    plain = Redis.from_url(tls_url.split("&")[0])
    try:
        nocert = Lean.from_redis(plain)
        assert nocert is not None
        with pytest.raises(RedisConnectionError):
            await nocert.execute("PING")
        await nocert.aclose()
    finally:
        await plain.aclose()


async def test_unix_socket_lean_connection(unix_url: str) -> None:
    fast = await _runs_on_the_lean_path(unix_url)
    assert fast.endpoint.path is not None and fast.endpoint.db == 2
    redis = Redis.from_url(unix_url)
    try:
        keys: Any = await redis.keys("af:*")
        assert keys, "the runs went to database 2 of the unix-socket server"
    finally:
        await redis.aclose()
