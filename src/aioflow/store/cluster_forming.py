"""How a :class:`~aioflow.store.redis_cluster.LocalCluster` comes to be: its nodes
started as ``redis-server`` processes with cluster options (and :class:`ClusterTLS`),
formed into a cluster with MEET, ADDSLOTS[RANGE] and REPLICATE (or restarted from
the layout saved in its directory), and waited on until they agree. Also the wire
plumbing both use: node ports, one-off commands to a node, ``CLUSTER NODES`` parsed.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import redis as redis_py
from redis.backoff import NoBackoff
from redis.retry import Retry

from aioflow.core.errors import ConfigError

from .redis_server import RedisServer, _tail

SLOTS = 16384
PORT_RANGE = (20000, 22767)
HOST = "127.0.0.1"
_BUS_OFFSET = 10000
_POLL = 0.05
_LAYOUT = "cluster.json"


@dataclass(frozen=True)
class ClusterTLS:
    """TLS for a :class:`LocalCluster`: every node also listens on a TLS port of its
    own, speaks TLS on the cluster bus and to its replicas, and answers TLS clients
    (``CLUSTER SLOTS``) with the TLS ports. ``auth_clients`` demands a client
    certificate signed by ``ca_file``. The plain ports stay open on loopback."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    auth_clients: bool = True

    def args(self, tls_port: int) -> list[str]:
        return [
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(Path(self.cert_file).absolute()),
            "--tls-key-file", str(Path(self.key_file).absolute()),
            "--tls-ca-cert-file", str(Path(self.ca_file).absolute()),
            "--tls-cluster", "yes",
            "--tls-replication", "yes",
            "--tls-auth-clients", "yes" if self.auth_clients else "no",
        ]  # fmt: skip


def pick_port(taken: set[int]) -> int:
    """A node port free now whose bus port is free too, neither in ``taken`` (updated)."""
    for _ in range(500):
        port = random.randint(*PORT_RANGE)
        pair = {port, port + _BUS_OFFSET}
        if not pair & taken and all(_port_free(p) for p in pair):
            taken.update(pair)
            return port
    raise ConfigError(f"no free port pair (port, port+{_BUS_OFFSET}) for a node in {PORT_RANGE}")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def cmd(port: int, *args: Any) -> Any:
    # no retries: a node that does not answer is a state to report, not to hide
    with redis_py.Redis(
        host=HOST,
        port=port,
        decode_responses=True,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        protocol=2,
        retry=Retry(NoBackoff(), 0),
    ) as c:
        return c.info(args[1]) if args[0] == "INFO" else c.execute_command(*args)


class Line(NamedTuple):
    """One line of ``CLUSTER NODES``."""

    id: str
    port: int
    flags: frozenset[str]
    master: str | None
    link: str
    slots: tuple[tuple[int, int], ...]


def cluster_nodes(port: int) -> list[Line]:
    lines = []
    for line in str(cmd(port, "CLUSTER", "NODES")).splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        # "[slot->-id]" entries are slots being migrated: not served by this node yet
        ranges = [spec.partition("-") for spec in f[8:] if not spec.startswith("[")]
        slots = tuple(sorted((int(lo), int(hi or lo)) for lo, _, hi in ranges))
        port_ = int(f[1].split("@")[0].rpartition(":")[2] or 0)
        master = None if f[3] == "-" else f[3]
        lines.append(Line(f[0], port_, frozenset(f[2].split(",")), master, f[7], slots))
    return lines


class Formation:
    """The nodes of one cluster in ``dir`` (see LocalCluster for the options): starts
    them, forms them into a cluster or restarts the one saved there, and tells what
    keeps them from agreeing."""

    def __init__(
        self,
        dir: Path,
        *,
        masters: int,
        replicas: int,
        appendonly: bool,
        node_timeout_ms: int,
        full_coverage: bool,
        binary: str | None,
        tls: ClusterTLS | None,
    ) -> None:
        self.dir = dir
        self.shape = {"masters": masters, "replicas": replicas}
        self.appendonly = appendonly
        self.node_timeout_ms = node_timeout_ms
        self.full_coverage = full_coverage
        self.binary = binary
        self.tls = tls
        self.tls_ports: dict[int, int] = {}  # port -> TLS port
        self.nodes: list[RedisServer] = []  # the masters, then their replicas
        self.ids: dict[int, str] = {}  # port -> node id

    def running(self) -> list[RedisServer]:
        return [s for s in self.nodes if s.running]

    def saved_ports(self) -> list[int]:
        try:
            saved = json.loads((self.dir / _LAYOUT).read_text())
        except (OSError, ValueError):
            return []
        ports = [int(p) for p in saved["ports"]]
        if not saved.get("formed"):
            for port in ports:  # a formation that did not finish: start afresh
                shutil.rmtree(self.dir / f"node-{port}", ignore_errors=True)
            return []
        if saved["shape"] != self.shape:
            raise ConfigError(
                f"{self.dir} holds a cluster of {saved['shape']}, not {self.shape}: "
                "remove that directory to make a new one"
            )
        tls_ports = [int(p) for p in saved.get("tls_ports", ())]
        if bool(tls_ports) != (self.tls is not None):
            with_tls = "with" if tls_ports else "without"
            raise ConfigError(
                f"{self.dir} holds a cluster {with_tls} TLS: remove that directory to "
                "make a new one"
            )
        if tls_ports:
            self.tls_ports = dict(zip(ports, tls_ports, strict=True))
        return ports

    def _save_ports(self, formed: bool) -> None:
        ports = [s.port for s in self.nodes]
        doc: dict[str, Any] = {"shape": self.shape, "ports": ports, "formed": formed}
        if self.tls is not None:
            doc["tls_ports"] = [self.tls_ports[p] for p in ports]
        (self.dir / _LAYOUT).write_text(json.dumps(doc) + "\n")

    def _start_node(
        self, port: int | None, taken: set[int], deadline: float, tls_port: int | None = None
    ) -> RedisServer:
        """Start one node; on a fresh port, retry another when someone took it meanwhile."""
        for attempt in range(3):
            chosen = port or pick_port(taken)
            tls: list[str] = []
            if self.tls is not None:  # the bus runs on the TLS port + 10000
                self.tls_ports[chosen] = tls_port or pick_port(taken)
                tls = self.tls.args(self.tls_ports[chosen])
            node_dir = self.dir / f"node-{chosen}"
            if port is None:
                shutil.rmtree(node_dir, ignore_errors=True)  # leftovers of an unsaved cluster
            server = RedisServer(
                dir=node_dir,
                port=chosen,
                binary=self.binary,
                appendonly=self.appendonly,
                extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    # short while forming: nodes gossip every node timeout / 2 at least
                    "--cluster-node-timeout", str(min(self.node_timeout_ms, 1000)),
                    "--cluster-require-full-coverage", "yes" if self.full_coverage else "no",
                    "--cluster-allow-reads-when-down", "no",
                    "--cluster-replica-validity-factor", "0",
                    # a replica's first sync starts at once (Redis 7 waits 5 s by default)
                    "--repl-diskless-sync", "yes",
                    "--repl-diskless-sync-delay", "0",
                    *tls,
                ],
            )  # fmt: skip
            try:
                server.start(timeout=max(1.0, deadline - time.monotonic()))
                return server
            except ConfigError as exc:
                lost = "already in use" in str(exc) or "another redis-server" in str(exc)
                if port is not None or not lost or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def restart(self, ports: list[int], deadline: float) -> None:
        """Start the saved cluster's nodes again on ``ports`` and wait until it is ok."""
        self.nodes = [
            self._start_node(port, set(), deadline, self.tls_ports.get(port)) for port in ports
        ]
        self.ids = {s.port: str(cmd(s.port, "CLUSTER", "MYID")) for s in self.nodes}
        self.wait(deadline, "the restarted cluster to be ok", self.problem)
        self.set_node_timeout(self.nodes)

    def form(self, deadline: float) -> None:
        """Start fresh nodes and form them into a cluster, saving its layout."""
        masters, replicas = self.shape["masters"], self.shape["replicas"]
        self.dir.mkdir(parents=True, exist_ok=True)
        taken: set[int] = set()
        self.nodes = []
        for _ in range(masters * (1 + replicas)):
            self.nodes.append(self._start_node(None, taken, deadline))
        self._save_ports(formed=False)
        for epoch, server in enumerate(self.nodes, start=1):
            # distinct config epochs up front, as redis-cli does: no collisions to settle
            cmd(server.port, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
            self.ids[server.port] = str(cmd(server.port, "CLUSTER", "MYID"))
        for i, server in enumerate(self.nodes):  # every pair meets: no waiting on gossip
            for other in self.nodes[i + 1 :]:
                # with TLS the bus is the TLS port's: MEET names that one
                meet = self.tls_ports.get(other.port, other.port)
                cmd(server.port, "CLUSTER", "MEET", HOST, meet)
        version = str(cmd(self.nodes[0].port, "INFO", "server")["redis_version"])
        for i, server in enumerate(self.nodes[:masters]):
            low, high = i * SLOTS // masters, (i + 1) * SLOTS // masters - 1
            if int(version.split(".")[0]) >= 7:
                cmd(server.port, "CLUSTER", "ADDSLOTSRANGE", low, high)
            else:
                cmd(server.port, "CLUSTER", "ADDSLOTS", *range(low, high + 1))
        self.wait(deadline, "every node to know every other", self._strangers)
        for i, server in enumerate(self.nodes[masters:]):
            master = self.nodes[i // replicas]
            cmd(server.port, "CLUSTER", "REPLICATE", self.ids[master.port])
        self.wait(deadline, "the cluster to be ok", self.problem)
        self.set_node_timeout(self.nodes)
        self._save_ports(formed=True)

    def set_node_timeout(self, servers: list[RedisServer]) -> None:
        for server in servers:
            cmd(server.port, "CONFIG", "SET", "cluster-node-timeout", self.node_timeout_ms)

    def _strangers(self) -> str | None:
        """None once every node lists every node with its link up, else who is missing."""
        want = {s.port for s in self.nodes}
        for server in self.nodes:
            lines = cluster_nodes(server.port)
            seen = {n.port for n in lines if not n.flags & {"handshake", "noaddr"}}
            down = [n.port for n in lines if n.link != "connected"]
            if seen != want or down:
                return f"node {server.port} knows {sorted(seen)}, no link to {down}"
        return None

    def problem(self) -> str | None:
        """None when the cluster is ok (see LocalCluster.wait_ok), else what is not."""
        running = self.running()
        alive = {self.ids.get(s.port) for s in running}
        maps = set()
        for server in running:
            if "cluster_state:ok" not in str(cmd(server.port, "CLUSTER", "INFO")):
                return f"node {server.port} says cluster_state is not ok"
            lines = cluster_nodes(server.port)
            owners = tuple(sorted((s, n.id) for n in lines for s in n.slots))
            covered = sum(high - low + 1 for (low, high), _ in owners)
            dead = [n.port for n in lines if n.slots and n.id not in alive]
            if covered != SLOTS or dead:
                return f"node {server.port} sees {covered} slots served, by stopped {dead}"
            maps.add(owners)
            flagged = [n.port for n in lines if n.id in alive and n.flags & {"fail", "fail?"}]
            if flagged:
                return f"node {server.port} takes running node(s) {flagged} for failed"
            # a restarted master whose slots moved on turns into a replica: not settled yet
            idle = [n.port for n in lines if n.id in alive and "master" in n.flags and not n.slots]
            if idle:
                return f"node {server.port} sees master(s) {idle} serving no slot"
            me = next(n for n in lines if "myself" in n.flags)
            if "slave" in me.flags and me.master in alive:
                repl = cmd(server.port, "INFO", "replication")
                if repl.get("master_link_status") != "up" or repl.get("master_sync_in_progress"):
                    return f"replica {server.port} is not in sync with its master"
        if len(maps) > 1:
            return "the nodes do not agree yet on which master serves which slots"
        return None

    def wait(self, deadline: float, what: str, problem: Callable[[], str | None]) -> None:
        """Poll ``problem`` until it answers None; past ``deadline`` raise ConfigError
        with what it answered last and the tail of every node's log."""
        while True:
            try:
                last = problem()
            except (redis_py.RedisError, OSError) as exc:
                last = f"a node did not answer: {exc}"
            if last is None:
                return
            if time.monotonic() >= deadline:
                parts = [f"Redis Cluster in {self.dir}: timed out waiting for {what}: {last}"]
                for s in self.nodes:
                    state = "running" if s.running else "stopped"
                    parts.append(
                        f"--- node {s.port} ({state}): {s.log_path} ---\n{_tail(s.log_path, 5)}"
                    )
                raise ConfigError("\n".join(parts))
            time.sleep(_POLL)
