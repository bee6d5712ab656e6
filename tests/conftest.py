"""Fixtures: a real redis-server and a real Redis Cluster for the session (each started
when a test first asks for it), emptied before each test that uses it."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis as redis_py
import redis.asyncio as aioredis

from aioflow.redis_cluster import LocalCluster
from aioflow.store.redis_server import RedisServer, free_port
from tests.chaos.harness import Workers
from tests.helpers import ClusterFactory, RedisFactory
from tests.otlp_receiver import Receiver
from tests.procs import Procs


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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One Redis Cluster for the session: 3 masters with a replica each, no persistence.

    Not for killing nodes (use ``cluster_factory``); its node timeout is long (5 s) so
    that a node starved of CPU on a loaded machine is not failed over by mistake.
    """
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), node_timeout_ms=5000)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> str:
    """URL of a master of the session's cluster, emptied (FLUSHALL on every master,
    SCRIPT FLUSH on every node) before the test."""
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[ClusterFactory]:
    """Starts fresh clusters a test may kill nodes of; all stopped at teardown.

    ``cluster_factory(**kwargs)`` takes LocalCluster's arguments (default 3 masters,
    1 replica each, node timeout 1 s); ``dir`` defaults to a fresh tmp directory.
    """
    factory = ClusterFactory(tmp_path / "clusters")
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(params=["single", "cluster"], ids=["single", "cluster"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """An emptied Redis URL: the session's single server, then the session's cluster,
    so that an end-to-end test runs on both (``test_x[single]``, ``test_x[cluster]``)."""
    url: str = request.getfixturevalue("redis_url" if request.param == "single" else "cluster_url")
    return url


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """aioflow commands as subprocesses (``procs.aioflow(name, *args, env=...)``), their
    output in files; all killed at teardown."""
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.kill_all()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    """An OTLP/HTTP receiver on a free loopback port: (receiver, port)."""
    r = Receiver()
    port = free_port()
    await r.start(port)
    try:
        yield r, port
    finally:
        await r.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Starts ``python -m aioflow worker tests/chaos/apps.py:app`` processes; all are
    killed at teardown and their logs written to stderr (shown when the test fails)."""
    pool = Workers(tmp_path / "workers")
    try:
        yield pool
    finally:
        pool.close()
        sys.stderr.write(pool.logs())
