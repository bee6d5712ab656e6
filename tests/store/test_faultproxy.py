"""The fault proxy itself, against a real redis-server: each mode does what it says."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import redis as redis_py
import redis.asyncio as aioredis
import redis.exceptions

from aioflow.store.redis_server import free_port
from tests.faultproxy import FaultProxy
from tests.helpers import wait_until

SILENT = 0.3  # seconds of silence that count as "nothing came through"
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _cmd(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        out.append(f"${len(a.encode())}\r\n{a}\r\n".encode())
    return b"".join(out)


@contextlib.asynccontextmanager
async def _raw(proxy: FaultProxy) -> AsyncIterator[Conn]:
    """A plain TCP connection through the proxy (no client library deadlines)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _ask(conn: Conn, *args: str, timeout: float = 5.0) -> bytes:
    reader, writer = conn
    writer.write(_cmd(*args))
    await writer.drain()
    return await asyncio.wait_for(reader.readline(), timeout)


async def _silent(conn: Conn) -> bool:
    """True when nothing (no data, no EOF, no reset) arrives within SILENT seconds."""
    try:
        await asyncio.wait_for(conn[0].read(1), SILENT)
    except TimeoutError:
        return True
    return False


async def _clients(r: aioredis.Redis) -> int:
    return len(await r.client_list())


async def test_forwards_and_counts(redis_url: str, redis: aioredis.Redis) -> None:
    async with FaultProxy.to(redis_url) as proxy:
        assert proxy.url == f"redis://127.0.0.1:{proxy.port}"
        async with aioredis.Redis.from_url(proxy.url) as r:
            await r.set("k", "v")
            assert await redis.get("k") == b"v"
        assert proxy.accepted == 1
        assert proxy.bytes_up > 0 and proxy.bytes_down > 0
        await wait_until(lambda: proxy.open == 0, timeout=5, what="the link to close")


async def test_stall_holds_both_ways_and_heal_flush_delivers(
    redis_url: str, redis: aioredis.Redis
) -> None:
    async with FaultProxy.to(redis_url) as proxy, _raw(proxy) as conn:
        assert await _ask(conn, "PING") == b"+PONG\r\n"
        assert proxy.stall() == 1
        assert (proxy.open, proxy.stalled) == (1, 1)
        before = proxy.bytes_up
        conn[1].write(_cmd("SET", "k", "v"))
        assert await _silent(conn)  # no answer, and no FIN or RST either
        assert await redis.get("k") is None  # held by the proxy, never reached Redis
        assert proxy.bytes_up == before

        proxy.heal(flush=True)
        assert await asyncio.wait_for(conn[0].readline(), 5) == b"+OK\r\n"
        assert await redis.get("k") == b"v"
        assert await _ask(conn, "PING") == b"+PONG\r\n"
        assert (proxy.stalled, proxy.dead) == (0, 0)


async def test_heal_without_flush_leaves_stalled_links_dead(
    redis_url: str, redis: aioredis.Redis
) -> None:
    async with FaultProxy.to(redis_url) as proxy, _raw(proxy) as old:
        assert await _ask(old, "PING") == b"+PONG\r\n"
        proxy.stall()
        old[1].write(_cmd("SET", "k", "v"))
        proxy.heal(flush=False)
        assert (proxy.stalled, proxy.dead) == (0, 1)
        async with _raw(proxy) as new:
            assert await _ask(new, "PING") == b"+PONG\r\n"
            assert await _silent(old)  # still open, still silent
            assert await redis.get("k") is None  # what was held is gone

            assert proxy.reset(only_stalled=True) == 1
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(old[0].read(1), 5)
            assert await _ask(new, "PING") == b"+PONG\r\n"  # the healthy link is untouched
            assert (proxy.open, proxy.dead, proxy.resets) == (1, 0, 1)


async def test_stall_new_accepts_but_forwards_nothing(redis_url: str) -> None:
    async with FaultProxy.to(redis_url) as proxy, _raw(proxy) as old:
        assert await _ask(old, "PING") == b"+PONG\r\n"
        proxy.stall_new()
        async with _raw(proxy) as new:
            new[1].write(_cmd("PING"))
            assert await _silent(new)
            assert await _ask(old, "PING") == b"+PONG\r\n"  # links open before still forward
            await wait_until(lambda: proxy.accepted == 2, timeout=5, what="the accept")
            assert proxy.stalled == 1

            proxy.heal(flush=True)
            assert await asyncio.wait_for(new[0].readline(), 5) == b"+PONG\r\n"


async def test_stall_new_without_accept_blackholes_connects(redis_url: str) -> None:
    async with FaultProxy.to(redis_url) as proxy:
        proxy.stall_new(accept=False)
        accepted = proxy.accepted
        t0 = time.monotonic()
        # more clients than the shrunk backlog holds: every one of them fails in time
        for _ in range(3):
            async with aioredis.Redis.from_url(
                proxy.url, socket_connect_timeout=0.5, socket_timeout=0.5, retry_on_timeout=False
            ) as r:
                with pytest.raises(
                    (redis.exceptions.TimeoutError, redis.exceptions.ConnectionError)
                ):
                    await asyncio.wait_for(r.ping(), 5)
        assert time.monotonic() - t0 < 6
        assert proxy.accepted == accepted

        proxy.heal(flush=False)
        async with aioredis.Redis.from_url(proxy.url, socket_timeout=5) as r:
            assert await r.ping()
        assert proxy.accepted > accepted


async def test_reset_sends_rst_to_both_ends(redis_url: str, redis: aioredis.Redis) -> None:
    baseline = await _clients(redis)
    async with FaultProxy.to(redis_url) as proxy:
        async with _raw(proxy) as conn:
            assert await _ask(conn, "PING") == b"+PONG\r\n"
            assert await _clients(redis) == baseline + 1
            assert proxy.reset() == 1
            with pytest.raises(ConnectionResetError):  # an RST, not a clean EOF
                await asyncio.wait_for(conn[0].read(1), 5)
        assert (proxy.open, proxy.resets) == (0, 1)
        await wait_until(
            lambda: _gone(redis, baseline), timeout=5, what="Redis to drop the reset client"
        )
        async with aioredis.Redis.from_url(proxy.url) as r:  # a new link forwards
            assert await r.ping()


async def _gone(redis: aioredis.Redis, baseline: int) -> bool:
    return await _clients(redis) == baseline


async def test_redis_py_call_hangs_when_stalled_and_works_after_heal(redis_url: str) -> None:
    async with FaultProxy.to(redis_url) as proxy:
        async with aioredis.Redis.from_url(proxy.url) as r:
            assert await r.ping()
            proxy.stall()
            with pytest.raises(TimeoutError):  # no deadline of its own: it would hang
                await asyncio.wait_for(r.ping(), 1.0)
        async with aioredis.Redis.from_url(proxy.url, socket_timeout=0.5) as r:
            proxy.stall_new()
            with pytest.raises(redis.exceptions.TimeoutError):
                await asyncio.wait_for(r.ping(), 5)
            proxy.heal()
            assert await asyncio.wait_for(r.ping(), 5)


def test_usable_from_sync_code(redis_url: str) -> None:
    with FaultProxy.to(redis_url) as proxy:
        with redis_py.Redis.from_url(proxy.url, socket_timeout=0.5) as r:
            assert r.ping()
            proxy.stall()
            with pytest.raises(redis.exceptions.TimeoutError):
                r.ping()
        proxy.heal(flush=False)
        with redis_py.Redis.from_url(proxy.url, socket_timeout=5) as r:
            assert r.ping()


async def test_upstream_down_resets_the_client() -> None:
    async with FaultProxy("127.0.0.1", free_port()) as proxy:
        with pytest.raises(ConnectionResetError):  # at connect already, or at the first read
            async with _raw(proxy) as conn:
                await asyncio.wait_for(conn[0].read(1), 5)
        assert proxy.accepted == 1
