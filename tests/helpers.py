"""Helpers shared by the tests.

Project rule: a test never sleeps to let something happen; it waits on a
condition with a deadline (:func:`wait_until`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from redis.cluster import RedisCluster as SyncRedisCluster

from aioflow.redis_cluster import LocalCluster
from aioflow.store.redis_server import RedisServer

__all__ = ["ClusterFactory", "RedisFactory", "run_aioflow", "sync_cluster", "wait_until"]


async def wait_until(
    cond: Callable[[], Awaitable[bool] | bool],
    *,
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.01,
) -> None:
    """Return as soon as ``cond()`` is true; raise AssertionError after ``timeout`` seconds.

    ``cond`` may be a plain or an async callable; it is evaluated once more at the
    deadline before giving up.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = cond()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))


@contextlib.contextmanager
def sync_cluster(url: str) -> Iterator[Any]:  # redis-py types it in part
    """redis-py's sync ``RedisCluster`` on ``url``, closed with every node's pool.

    Its own ``close()`` leaves the sockets of keyless commands (CLUSTER INFO,
    CONFIG GET, CLUSTER KEYSLOT, ...) to the garbage collector, and so a
    ResourceWarning to whichever later test happens to collect them.
    """
    client: Any = SyncRedisCluster.from_url(url)
    try:
        yield client
    finally:
        for node in client.get_nodes():
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()
        client.close()


class RedisFactory:
    """Starts independent :class:`RedisServer` instances; ``close()`` stops them all.

    Given as the ``redis_factory`` fixture, for tests that kill or restart Redis.
    """

    def __init__(self, base_dir: str | os.PathLike[str]) -> None:
        self._base_dir = Path(base_dir)
        self.servers: list[RedisServer] = []

    def __call__(
        self,
        *,
        dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        binary: str | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        extra_args: Sequence[str] = (),
        start: bool = True,
    ) -> RedisServer:
        """A new server (started unless ``start=False``); ``dir`` defaults to a fresh tmp dir."""
        if dir is None:
            self._base_dir.mkdir(parents=True, exist_ok=True)
            dir = tempfile.mkdtemp(prefix="redis-", dir=self._base_dir)
        server = RedisServer(
            dir=dir,
            port=port,
            binary=binary,
            appendonly=appendonly,
            appendfsync=appendfsync,
            extra_args=extra_args,
        )
        self.servers.append(server)
        if start:
            server.start()
        return server

    def close(self) -> None:
        """Stop every server this factory made (also those a test already stopped)."""
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()


class ClusterFactory:
    """Starts independent :class:`LocalCluster` instances; ``close()`` stops them all.

    Given as the ``cluster_factory`` fixture, for tests that kill cluster nodes.
    """

    def __init__(self, base_dir: str | os.PathLike[str]) -> None:
        self._base_dir = Path(base_dir)
        self.clusters: list[LocalCluster] = []

    def __call__(
        self,
        *,
        dir: str | os.PathLike[str] | None = None,
        masters: int = 3,
        replicas: int = 1,
        appendonly: bool = False,
        node_timeout_ms: int = 1000,
        full_coverage: bool = False,
        binary: str | None = None,
        start: bool = True,
    ) -> LocalCluster:
        """A new cluster (started unless ``start=False``); ``dir`` defaults to a fresh tmp dir."""
        if dir is None:
            self._base_dir.mkdir(parents=True, exist_ok=True)
            dir = tempfile.mkdtemp(prefix="cluster-", dir=self._base_dir)
        cluster = LocalCluster(
            Path(dir),
            masters=masters,
            replicas=replicas,
            appendonly=appendonly,
            node_timeout_ms=node_timeout_ms,
            full_coverage=full_coverage,
            binary=binary,
        )
        self.clusters.append(cluster)
        if start:
            cluster.start()
        return cluster

    def close(self) -> None:
        """Stop every cluster this factory made."""
        for cluster in reversed(self.clusters):
            cluster.stop()
        self.clusters.clear()


ROOT = Path(__file__).resolve().parent.parent


async def run_aioflow(
    *args: str, timeout: float = 20.0, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """Run ``python -m aioflow ARGS`` with no AIOFLOW_* variables but ``env``: exit
    code, stdout, stderr."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIOFLOW_")},
        **(env or {}),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioflow",
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certs(d: Path) -> None:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=aioflow test CA", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "san.ext"]), ("client", [])):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=aioflow test {name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", *ext, cwd=d)  # fmt: skip
