"""Run a real Redis Cluster of local ``redis-server`` processes, for ``aioflow dev
--cluster N`` and the tests. Each node is a :class:`~aioflow.redis_server.RedisServer`
(Redis 6.2 or 7) with its data in ``<dir>/node-<port>``; the cluster is formed with
MEET, ADDSLOTS[RANGE] and REPLICATE, without ``redis-cli``
(:mod:`aioflow.store.cluster_forming`).

Node ports come from 20000-22767: their bus ports (+10000) stay below 55536 and below
Linux's ephemeral range, where outgoing connections and ``free_port()`` take theirs.
``cluster-require-full-coverage no`` (unless ``full_coverage=True``): while a master
is down only its slots fail and the other masters keep serving, which is what a
failover test should watch; with ``yes`` every node answers ``CLUSTERDOWN`` until the
promotion. Replicas always take over (``cluster-replica-validity-factor 0``); a
failover needs a majority of masters alive, so three masters at least.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import redis as redis_py

from aioflow.core.errors import ConfigError

from .cluster_forming import HOST, ClusterTLS, Formation, cluster_nodes, cmd, pick_port
from .cluster_forming import SLOTS as SLOTS
from .redis_server import RedisServer

__all__ = ["ClusterNode", "ClusterTLS", "LocalCluster"]

_pick_port = pick_port  # the name the tests know it by


@dataclass(frozen=True)
class ClusterNode:
    """One running node as the cluster sees it now (from ``CLUSTER NODES``)."""

    server: RedisServer
    node_id: str
    role: str  # "master" or "replica"
    master_id: str | None  # a replica's master
    slots: tuple[tuple[int, int], ...]  # the inclusive slot ranges a master serves

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.server.port}"


Node: TypeAlias = RedisServer | ClusterNode
"""A node given to LocalCluster: its RedisServer or its current ClusterNode record."""


class LocalCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, in ``dir``.

    ``start()`` returns once the cluster is ok (see ``wait_ok``); a ``dir`` that
    holds a cluster formed before, of the same shape, is restarted on its ports
    with its data. ``stop()`` stops every node; also a context manager.
    ``appendonly`` turns AOF on for every node; ``node_timeout_ms`` is
    ``cluster-node-timeout`` (a dead master is failed over about two of those
    later); ``full_coverage`` is ``cluster-require-full-coverage`` (see the
    module); ``binary`` is the ``redis-server`` to run (default: as RedisServer);
    ``tls`` adds a TLS port to every node (see :class:`ClusterTLS` and
    :attr:`tls_urls`).
    """

    def __init__(
        self,
        dir: str | Path,
        *,
        masters: int = 3,
        replicas: int = 1,
        appendonly: bool = False,
        node_timeout_ms: int = 1000,
        full_coverage: bool = False,
        binary: str | None = None,
        tls: ClusterTLS | None = None,
    ) -> None:
        if masters < 1 or replicas < 0 or node_timeout_ms < 100:
            raise ConfigError(
                f"a cluster needs masters >= 1, replicas >= 0 and node_timeout_ms >= 100, "
                f"not {masters}, {replicas}, {node_timeout_ms}"
            )
        self._formation = Formation(
            Path(dir).absolute(),
            masters=masters,
            replicas=replicas,
            appendonly=appendonly,
            node_timeout_ms=node_timeout_ms,
            full_coverage=full_coverage,
            binary=binary,
            tls=tls,
        )
        self._heirs: dict[int, set[str]] = {}  # port of a killed node -> its replicas' ids

    @property
    def nodes(self) -> list[RedisServer]:
        """Every node in formation order: the masters, then their replicas."""
        return self._formation.nodes

    def __repr__(self) -> str:
        ports = ",".join(str(s.port) for s in self.nodes) or "not started"
        return f"<LocalCluster dir={str(self.dir)!r} ports={ports}>"

    @property
    def dir(self) -> Path:
        return self._formation.dir

    @property
    def url(self) -> str:
        """URL of the first node of the formation (a master) that still runs."""
        running = self._running() or self.nodes
        if not running:
            raise ConfigError("the cluster is not started")
        return f"redis://{HOST}:{running[0].port}"

    @property
    def urls(self) -> list[str]:
        """URLs of every node, in formation order."""
        return [f"redis://{HOST}:{s.port}" for s in self.nodes]

    @property
    def tls_urls(self) -> list[str]:
        """``rediss://`` URLs of every node's TLS port, in formation order (add the
        certificate options a client needs, e.g. ``?ssl_ca_certs=...``)."""
        if self._formation.tls is None:
            raise ConfigError("this cluster was started without tls")
        return [f"rediss://{HOST}:{self._formation.tls_ports[s.port]}" for s in self.nodes]

    def start(self, timeout: float = 30.0) -> None:
        """Start the nodes and form the cluster (or restart the one saved in ``dir``).

        Raises :class:`~aioflow.errors.ConfigError`, with the tail of the nodes'
        logs, when a node does not start or the cluster is not ok within
        ``timeout`` seconds; the nodes started so far are stopped again.
        """
        if self.nodes and all(s.running for s in self.nodes):
            return
        deadline = time.monotonic() + timeout
        try:
            ports = self._saved_ports()
            if ports:
                self._formation.restart(ports, deadline)
            else:
                self._formation.form(deadline)
        except BaseException:
            self.stop()
            raise

    def _saved_ports(self) -> list[int]:
        return self._formation.saved_ports()

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL if one lingers); idempotent."""
        for server in reversed(self.nodes):
            server.stop()

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _running(self) -> list[RedisServer]:
        return self._formation.running()

    def _records(self) -> list[ClusterNode]:
        """The running nodes, as the first running node that answers sees them."""
        error: Exception | None = None
        for asked in self._running():
            try:
                lines = cluster_nodes(asked.port)
            except (redis_py.RedisError, OSError) as exc:
                error = exc
                continue
            seen = {n.port: n for n in lines if "fail" not in n.flags}
            return [
                ClusterNode(
                    s, n.id, "master" if "master" in n.flags else "replica", n.master, n.slots
                )
                for s in self._running()
                if (n := seen.get(s.port)) is not None
            ]
        raise ConfigError(f"no node of the cluster in {self.dir} answers (last error: {error})")

    def masters(self) -> list[ClusterNode]:
        """The running masters that serve slots, in formation order."""
        return [r for r in self._records() if r.role == "master" and r.slots]

    def replicas(self) -> list[ClusterNode]:
        """The running replicas, in formation order."""
        return [r for r in self._records() if r.role == "replica"]

    def node(self, node: Node) -> ClusterNode:
        """The current record of a running node (its role may have changed)."""
        found = [r for r in self._records() if r.port == node.port]
        if not found:
            raise ConfigError(f"node {node.port} is not running or not in the cluster")
        return found[0]

    def wait_ok(self, timeout: float = 10.0) -> None:
        """Wait until every running node says ``cluster_state:ok``, all agree on one slot
        map that covers every slot with running masters, none takes a running node for
        failed or sees a master without slots, and every replica whose master runs is
        in sync. Raises :class:`~aioflow.errors.ConfigError` after ``timeout`` s."""
        problem = self._formation.problem
        self._formation.wait(time.monotonic() + timeout, "the cluster to be ok", problem)

    def kill(self, node: Node) -> None:
        """SIGKILL one node (``restart`` starts it again; it rejoins the cluster)."""
        server = node.server if isinstance(node, ClusterNode) else node
        with contextlib.suppress(ConfigError):  # remember who can take over from it
            me = self._formation.ids.get(server.port)
            self._heirs[server.port] = {r.node_id for r in self._records() if r.master_id == me}
        server.kill()

    def restart(self, node: Node, timeout: float = 10.0) -> None:
        """Start a killed node again on its port and data."""
        server = node.server if isinstance(node, ClusterNode) else node
        server.start(timeout)
        self._formation.set_node_timeout([server])

    def wait_failover(self, killed: Node, timeout: float = 15.0) -> ClusterNode:
        """Wait until a replica the ``killed`` master had (when ``kill`` was called) is a
        master and the cluster is ok again (see ``wait_ok``); return that promoted node.

        Raises :class:`~aioflow.errors.ConfigError` when the node had no replica, or
        after ``timeout`` seconds.
        """
        heirs = self._heirs.get(killed.port)
        if not heirs:
            raise ConfigError(f"node {killed.port} was not killed by kill() or had no replica")
        promoted: list[ClusterNode] = []

        def problem() -> str | None:
            promoted[:] = [r for r in self.masters() if r.node_id in heirs]
            if not promoted:
                return f"no replica of {killed.port} promoted yet"
            return self._formation.problem()

        what = f"a replica of {killed.port} to take over"
        self._formation.wait(time.monotonic() + timeout, what, problem)
        return promoted[0]

    def flushall(self) -> None:
        """Empty the cluster: FLUSHALL on every master (and WAIT for its replicas), and
        SCRIPT FLUSH on every running node."""
        masters = {r.port for r in self.masters()}
        for server in self._running():
            if server.port in masters:
                cmd(server.port, "FLUSHALL")
                replicas = int(cmd(server.port, "INFO", "replication")["connected_slaves"])
                if replicas:
                    cmd(server.port, "WAIT", replicas, 2000)
            cmd(server.port, "SCRIPT", "FLUSH")
