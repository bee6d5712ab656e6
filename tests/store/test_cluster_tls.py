"""aioflow on a Redis Cluster over TLS: a ``rediss://`` URL of one node (with a CA
and a client certificate) reaches every master over TLS, on the lean hot path and
on redis-py's RedisCluster alike, and a cluster node refuses a client without the
certificate."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

import aioflow
from aioflow.redis_cluster import ClusterTLS, LocalCluster
from aioflow.store.keys import RunId
from aioflow.store.topology import Router, lean
from tests.engine_helpers import running
from tests.helpers import make_certs

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, str]]:
    """A 3-master cluster whose nodes demand a client certificate on their TLS
    ports, and the query string a client needs for them."""
    d = tmp_path_factory.mktemp("tls-cluster")
    certs = d / "certs"
    certs.mkdir()
    make_certs(certs)
    tls = ClusterTLS(certs / "server.crt", certs / "server.key", certs / "ca.crt")
    with LocalCluster(d / "nodes", masters=3, replicas=0, tls=tls, node_timeout_ms=5000) as c:
        query = (
            f"?ssl_ca_certs={certs / 'ca.crt'}&ssl_certfile={certs / 'client.crt'}"
            f"&ssl_keyfile={certs / 'client.key'}"
        )
        yield c, query


def _flow() -> aioflow.Flow:
    flow = aioflow.Flow("tlshello", partitions=6)

    @flow.node
    async def greet(name: str) -> str:
        return f"hello, {name}"

    return flow


async def test_runs_reach_every_master_over_tls(tls_cluster: tuple[LocalCluster, str]) -> None:
    cluster, query = tls_cluster
    url = cluster.tls_urls[1] + query  # any node: the others are found
    flow = _flow()
    async with running([flow], url) as s:
        ids = await asyncio.gather(*(s.client.submit(flow, str(i)) for i in range(30)))
        results = await asyncio.gather(*(s.client.result(i, timeout=20) for i in ids))
        assert results == [f"hello, {i}" for i in range(30)]

        router = s.client.engine.fast
        assert isinstance(router, Router) and router.cluster
        tls_ports = {int(u.rsplit(":", 1)[1]) for u in cluster.tls_urls}
        # the masters were discovered on their TLS ports, and the runs touched each
        assert {port for _, port in router.masters} <= tls_ports
        assert {router.addr_for(RunId.parse(i).stream) for i in ids} == set(router.masters)
        assert router.lean_template().endpoint.ssl is not None
        # off the hot path: redis-py's RedisCluster, over TLS too
        assert isinstance(s.client.engine.redis, RedisCluster)
        page, _ = await s.client.runs("tlshello", limit=50)
        assert {st.result for st in page} == {f"hello, {i}" for i in range(30)}


async def test_a_cluster_redis_client_given_over_tls_stays_on_tls(
    tls_cluster: tuple[LocalCluster, str],
) -> None:
    cluster, query = tls_cluster
    given = RedisCluster.from_url(cluster.tls_urls[0] + query)
    fast = lean(given)
    try:
        assert isinstance(fast, Router)
        assert fast.lean_template().endpoint.ssl is not None
        await fast.start()
        assert fast.cluster and len(fast.masters) == 3
        assert await fast.execute("PING") == b"PONG"
    finally:
        await fast.aclose()
        await given.aclose()


async def test_a_client_without_the_certificate_is_refused(
    tls_cluster: tuple[LocalCluster, str],
) -> None:
    cluster, query = tls_cluster
    no_cert = cluster.tls_urls[0] + query.split("&")[0]  # the CA only
    async with aioflow.Client(no_cert) as client:
        with pytest.raises(aioflow.RedisUnavailable):
            await client.submit("tlshello", "x")


def test_the_layout_remembers_tls(tmp_path: Path, tls_cluster: tuple[LocalCluster, str]) -> None:
    cluster, _ = tls_cluster
    # the same directory without TLS is refused, not half-started
    with pytest.raises(aioflow.ConfigError, match="with TLS"):
        LocalCluster(cluster.dir, masters=3, replicas=0)._saved_ports()


async def test_a_tls_option_redis_cluster_lacks_is_a_config_error(
    tls_cluster: tuple[LocalCluster, str],
) -> None:
    cluster, query = tls_cluster
    url = cluster.tls_urls[0] + query + "&ssl_ca_path=/etc/ssl/certs"
    async with aioflow.Client(url) as client:
        with pytest.raises(aioflow.ConfigError, match="ssl_ca_path"):
            await client.submit("tlshello", "x")


async def test_a_restarted_tls_cluster_keeps_its_tls_ports(
    tls_cluster: tuple[LocalCluster, str],
) -> None:
    cluster, query = tls_cluster
    before = cluster.tls_urls
    cluster.stop()
    cluster.start()
    assert cluster.tls_urls == before
    given = RedisCluster.from_url(before[2] + query)
    try:
        await given.set("tls-probe", "1")
        assert await given.get("tls-probe") == b"1"
        assert len(given.get_primaries()) == 3
    finally:
        await given.aclose()
