"""Run a real Redis Cluster of local ``redis-server`` processes, for ``aioflow dev
--cluster N`` and the tests. Each node is a :class:`~aioflow.redis_server.RedisServer`
(Redis 6.2 or 7) with its data in ``<dir>/node-<port>``; the cluster is formed with
MEET, ADDSLOTS[RANGE] and REPLICATE, without ``redis-cli``.

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
import json
import random
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

import redis as redis_py
from redis.backoff import NoBackoff
from redis.retry import Retry

from aioflow.core.errors import ConfigError

from .redis_server import RedisServer, _tail

__all__ = ["ClusterNode", "ClusterTLS", "LocalCluster"]

SLOTS = 16384
PORT_RANGE = (20000, 22767)
_HOST = "127.0.0.1"
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
        return f"redis://{_HOST}:{self.server.port}"


Node: TypeAlias = RedisServer | ClusterNode
"""A node given to LocalCluster: its RedisServer or its current ClusterNode record."""


def _pick_port(taken: set[int]) -> int:
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
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _cmd(port: int, *args: Any) -> Any:
    # no retries: a node that does not answer is a state to report, not to hide
    with redis_py.Redis(
        host=_HOST,
        port=port,
        decode_responses=True,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        protocol=2,
        retry=Retry(NoBackoff(), 0),
    ) as c:
        return c.info(args[1]) if args[0] == "INFO" else c.execute_command(*args)


class _Line(NamedTuple):
    """One line of ``CLUSTER NODES``."""

    id: str
    port: int
    flags: frozenset[str]
    master: str | None
    link: str
    slots: tuple[tuple[int, int], ...]


def _cluster_nodes(port: int) -> list[_Line]:
    lines = []
    for line in str(_cmd(port, "CLUSTER", "NODES")).splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        # "[slot->-id]" entries are slots being migrated: not served by this node yet
        ranges = [spec.partition("-") for spec in f[8:] if not spec.startswith("[")]
        slots = tuple(sorted((int(lo), int(hi or lo)) for lo, _, hi in ranges))
        port_ = int(f[1].split("@")[0].rpartition(":")[2] or 0)
        master = None if f[3] == "-" else f[3]
        lines.append(_Line(f[0], port_, frozenset(f[2].split(",")), master, f[7], slots))
    return lines


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
        self._dir = Path(dir).absolute()
        self._shape = {"masters": masters, "replicas": replicas}
        self._appendonly = appendonly
        self._node_timeout_ms = node_timeout_ms
        self._full_coverage = full_coverage
        self._binary = binary
        self._tls = tls
        self._tls_ports: dict[int, int] = {}  # port -> TLS port
        self.nodes: list[RedisServer] = []
        """Every node in formation order: the masters, then their replicas."""
        self._ids: dict[int, str] = {}  # port -> node id
        self._heirs: dict[int, set[str]] = {}  # port of a killed node -> its replicas' ids

    def __repr__(self) -> str:
        ports = ",".join(str(s.port) for s in self.nodes) or "not started"
        return f"<LocalCluster dir={str(self._dir)!r} ports={ports}>"

    @property
    def dir(self) -> Path:
        return self._dir

    @property
    def url(self) -> str:
        """URL of the first node of the formation (a master) that still runs."""
        running = self._running() or self.nodes
        if not running:
            raise ConfigError("the cluster is not started")
        return f"redis://{_HOST}:{running[0].port}"

    @property
    def urls(self) -> list[str]:
        """URLs of every node, in formation order."""
        return [f"redis://{_HOST}:{s.port}" for s in self.nodes]

    @property
    def tls_urls(self) -> list[str]:
        """``rediss://`` URLs of every node's TLS port, in formation order (add the
        certificate options a client needs, e.g. ``?ssl_ca_certs=...``)."""
        if self._tls is None:
            raise ConfigError("this cluster was started without tls")
        return [f"rediss://{_HOST}:{self._tls_ports[s.port]}" for s in self.nodes]

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
                self.nodes = [
                    self._start_node(port, set(), deadline, self._tls_ports.get(port))
                    for port in ports
                ]
                self._ids = {s.port: str(_cmd(s.port, "CLUSTER", "MYID")) for s in self.nodes}
                self._wait(deadline, "the restarted cluster to be ok", self._problem)
                self._set_node_timeout(self.nodes)
            else:
                self._form(deadline)
        except BaseException:
            self.stop()
            raise

    def _saved_ports(self) -> list[int]:
        try:
            saved = json.loads((self._dir / _LAYOUT).read_text())
        except (OSError, ValueError):
            return []
        ports = [int(p) for p in saved["ports"]]
        if not saved.get("formed"):
            for port in ports:  # a formation that did not finish: start afresh
                shutil.rmtree(self._dir / f"node-{port}", ignore_errors=True)
            return []
        if saved["shape"] != self._shape:
            raise ConfigError(
                f"{self._dir} holds a cluster of {saved['shape']}, not {self._shape}: "
                "remove that directory to make a new one"
            )
        tls_ports = [int(p) for p in saved.get("tls_ports", ())]
        if bool(tls_ports) != (self._tls is not None):
            with_tls = "with" if tls_ports else "without"
            raise ConfigError(
                f"{self._dir} holds a cluster {with_tls} TLS: remove that directory to "
                "make a new one"
            )
        if tls_ports:
            self._tls_ports = dict(zip(ports, tls_ports, strict=True))
        return ports

    def _save_ports(self, formed: bool) -> None:
        ports = [s.port for s in self.nodes]
        doc: dict[str, Any] = {"shape": self._shape, "ports": ports, "formed": formed}
        if self._tls is not None:
            doc["tls_ports"] = [self._tls_ports[p] for p in ports]
        (self._dir / _LAYOUT).write_text(json.dumps(doc) + "\n")

    def _start_node(
        self, port: int | None, taken: set[int], deadline: float, tls_port: int | None = None
    ) -> RedisServer:
        """Start one node; on a fresh port, retry another when someone took it meanwhile."""
        for attempt in range(3):
            chosen = port or _pick_port(taken)
            tls: list[str] = []
            if self._tls is not None:  # the bus runs on the TLS port + 10000
                self._tls_ports[chosen] = tls_port or _pick_port(taken)
                tls = self._tls.args(self._tls_ports[chosen])
            node_dir = self._dir / f"node-{chosen}"
            if port is None:
                shutil.rmtree(node_dir, ignore_errors=True)  # leftovers of an unsaved cluster
            server = RedisServer(
                dir=node_dir,
                port=chosen,
                binary=self._binary,
                appendonly=self._appendonly,
                extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    # short while forming: nodes gossip every node timeout / 2 at least
                    "--cluster-node-timeout", str(min(self._node_timeout_ms, 1000)),
                    "--cluster-require-full-coverage", "yes" if self._full_coverage else "no",
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

    def _form(self, deadline: float) -> None:
        masters, replicas = self._shape["masters"], self._shape["replicas"]
        self._dir.mkdir(parents=True, exist_ok=True)
        taken: set[int] = set()
        self.nodes = []
        for _ in range(masters * (1 + replicas)):
            self.nodes.append(self._start_node(None, taken, deadline))
        self._save_ports(formed=False)
        for epoch, server in enumerate(self.nodes, start=1):
            # distinct config epochs up front, as redis-cli does: no collisions to settle
            _cmd(server.port, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
            self._ids[server.port] = str(_cmd(server.port, "CLUSTER", "MYID"))
        for i, server in enumerate(self.nodes):  # every pair meets: no waiting on gossip
            for other in self.nodes[i + 1 :]:
                # with TLS the bus is the TLS port's: MEET names that one
                meet = self._tls_ports.get(other.port, other.port)
                _cmd(server.port, "CLUSTER", "MEET", _HOST, meet)
        version = str(_cmd(self.nodes[0].port, "INFO", "server")["redis_version"])
        for i, server in enumerate(self.nodes[:masters]):
            low, high = i * SLOTS // masters, (i + 1) * SLOTS // masters - 1
            if int(version.split(".")[0]) >= 7:
                _cmd(server.port, "CLUSTER", "ADDSLOTSRANGE", low, high)
            else:
                _cmd(server.port, "CLUSTER", "ADDSLOTS", *range(low, high + 1))
        self._wait(deadline, "every node to know every other", self._strangers)
        for i, server in enumerate(self.nodes[masters:]):
            master = self.nodes[i // replicas]
            _cmd(server.port, "CLUSTER", "REPLICATE", self._ids[master.port])
        self._wait(deadline, "the cluster to be ok", self._problem)
        self._set_node_timeout(self.nodes)
        self._save_ports(formed=True)

    def _set_node_timeout(self, servers: list[RedisServer]) -> None:
        for server in servers:
            _cmd(server.port, "CONFIG", "SET", "cluster-node-timeout", self._node_timeout_ms)

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
        return [s for s in self.nodes if s.running]

    def _records(self) -> list[ClusterNode]:
        """The running nodes, as the first running node that answers sees them."""
        error: Exception | None = None
        for asked in self._running():
            try:
                lines = _cluster_nodes(asked.port)
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
        raise ConfigError(f"no node of the cluster in {self._dir} answers (last error: {error})")

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

    def _strangers(self) -> str | None:
        """None once every node lists every node with its link up, else who is missing."""
        want = {s.port for s in self.nodes}
        for server in self.nodes:
            lines = _cluster_nodes(server.port)
            seen = {n.port for n in lines if not n.flags & {"handshake", "noaddr"}}
            down = [n.port for n in lines if n.link != "connected"]
            if seen != want or down:
                return f"node {server.port} knows {sorted(seen)}, no link to {down}"
        return None

    def _problem(self) -> str | None:
        """None when the cluster is ok (see ``wait_ok``), else what is not."""
        running = self._running()
        alive = {self._ids.get(s.port) for s in running}
        maps = set()
        for server in running:
            if "cluster_state:ok" not in str(_cmd(server.port, "CLUSTER", "INFO")):
                return f"node {server.port} says cluster_state is not ok"
            lines = _cluster_nodes(server.port)
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
                repl = _cmd(server.port, "INFO", "replication")
                if repl.get("master_link_status") != "up" or repl.get("master_sync_in_progress"):
                    return f"replica {server.port} is not in sync with its master"
        if len(maps) > 1:
            return "the nodes do not agree yet on which master serves which slots"
        return None

    def _wait(self, deadline: float, what: str, problem: Callable[[], str | None]) -> None:
        while True:
            try:
                last = problem()
            except (redis_py.RedisError, OSError) as exc:
                last = f"a node did not answer: {exc}"
            if last is None:
                return
            if time.monotonic() >= deadline:
                parts = [f"Redis Cluster in {self._dir}: timed out waiting for {what}: {last}"]
                for s in self.nodes:
                    state = "running" if s.running else "stopped"
                    parts.append(
                        f"--- node {s.port} ({state}): {s.log_path} ---\n{_tail(s.log_path, 5)}"
                    )
                raise ConfigError("\n".join(parts))
            time.sleep(_POLL)

    def wait_ok(self, timeout: float = 10.0) -> None:
        """Wait until every running node says ``cluster_state:ok``, all agree on one slot
        map that covers every slot with running masters, none takes a running node for
        failed or sees a master without slots, and every replica whose master runs is
        in sync. Raises :class:`~aioflow.errors.ConfigError` after ``timeout`` s."""
        self._wait(time.monotonic() + timeout, "the cluster to be ok", self._problem)

    def kill(self, node: Node) -> None:
        """SIGKILL one node (``restart`` starts it again; it rejoins the cluster)."""
        server = node.server if isinstance(node, ClusterNode) else node
        with contextlib.suppress(ConfigError):  # remember who can take over from it
            me = self._ids.get(server.port)
            self._heirs[server.port] = {r.node_id for r in self._records() if r.master_id == me}
        server.kill()

    def restart(self, node: Node, timeout: float = 10.0) -> None:
        """Start a killed node again on its port and data."""
        server = node.server if isinstance(node, ClusterNode) else node
        server.start(timeout)
        self._set_node_timeout([server])

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
            return self._problem() if promoted else f"no replica of {killed.port} promoted yet"

        self._wait(time.monotonic() + timeout, f"a replica of {killed.port} to take over", problem)
        return promoted[0]

    def flushall(self) -> None:
        """Empty the cluster: FLUSHALL on every master (and WAIT for its replicas), and
        SCRIPT FLUSH on every running node."""
        masters = {r.port for r in self.masters()}
        for server in self._running():
            if server.port in masters:
                _cmd(server.port, "FLUSHALL")
                replicas = int(_cmd(server.port, "INFO", "replication")["connected_slaves"])
                if replicas:
                    _cmd(server.port, "WAIT", replicas, 2000)
            _cmd(server.port, "SCRIPT", "FLUSH")
