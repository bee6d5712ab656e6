"""What a node function sees of its run: :class:`Context` and the per-run store."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aioflow.store.topology import Conn

from aioflow.core import codec


class RunStore:
    """A key/value store private to one run; it expires with the run.

    It goes over the worker's routed lean connection: on a cluster each call is
    sent to the run's master and, being idempotent, retried through a failover
    (for up to the failover timeout) before an error reaches the node."""

    __slots__ = ("_conn", "_key")

    def __init__(self, conn: Conn, run_key: str) -> None:
        self._conn = conn
        self._key = run_key

    async def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""
        raw: Any = await self._conn.execute("HGET", self._key, f"kv:{key}", idempotent=True)
        return default if raw is None else codec.decode(raw)

    async def set(self, key: str, value: Any) -> None:
        """Store ``value`` (bytes or anything JSON-serialisable) under ``key``."""
        value = codec.encode(value)
        await self._conn.execute("HSET", self._key, f"kv:{key}", value, idempotent=True)

    async def delete(self, key: str) -> None:
        """Remove ``key``; no error if it is absent."""
        await self._conn.execute("HDEL", self._key, f"kv:{key}", idempotent=True)


_NODE_LOGGER = logging.getLogger("aioflow.node")


class NodeLog(logging.LoggerAdapter[logging.Logger]):
    """``ctx.log``: its records carry the run's fields, merged with a call's ``extra``
    (the plain adapter would drop the call's)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        given = kwargs.get("extra")
        kwargs["extra"] = {**(self.extra or {}), **given} if given else self.extra
        return msg, kwargs


class Context:
    """Passed as the second argument to node functions that take two parameters.

    - ``run_id``: the run's id; ``flow``: the flow name;
    - ``vertex``: the vertex address (``name``, or ``group[key]/name`` inside a
      subdag, branch or foreach);
    - ``attempt``: 1 on the first execution, counting retries and redeliveries;
    - ``options``: the request's query parameters, ``dict[str, list[str]]``;
    - ``store``: a :class:`RunStore` shared by the run's vertices;
    - ``log``: a logger adapter (on ``aioflow.node``) whose records carry ``flow``,
      ``run_id``, ``vertex`` and ``attempt`` as attributes; the ``aioflow`` commands
      show them in every log format. An ``extra=`` given to a call adds to them.
    """

    __slots__ = ("attempt", "flow", "log", "options", "run_id", "store", "vertex")

    def __init__(
        self,
        *,
        run_id: str,
        flow: str,
        vertex: str,
        attempt: int,
        options: dict[str, list[str]],
        store: RunStore,
    ) -> None:
        self.run_id = run_id
        self.flow = flow
        self.vertex = vertex
        self.attempt = attempt
        self.options = options
        self.store = store
        self.log = NodeLog(
            _NODE_LOGGER, {"flow": flow, "run_id": run_id, "vertex": vertex, "attempt": attempt}
        )

    def __repr__(self) -> str:
        return f"Context(run_id={self.run_id!r}, vertex={self.vertex!r}, attempt={self.attempt})"
