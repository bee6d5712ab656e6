"""Waiting for replicas to acknowledge a submit (``submit_replicas``), so a
failover right after it cannot lose the run."""

from __future__ import annotations

from aioflow.core.errors import RedisUnavailable
from aioflow.store.keys import RunId
from aioflow.store.topology import Conn


async def acknowledged(fast: Conn, rid: RunId, replicas: int, timeout: float) -> None:
    """Wait until ``replicas`` replicas hold the submit of ``rid``; raises
    :class:`RedisUnavailable` when fewer acknowledge it within ``timeout`` seconds."""
    # WAIT counts the replicas that have this connection's writes: the submit
    # went over the router's connection to the run's master, and so does WAIT
    n, ms = replicas, int(timeout * 1000)
    acked = int(await fast.execute_on(fast.addr_for(rid.stream), "WAIT", n, ms))
    if acked < n:
        raise RedisUnavailable(
            f"run {rid} was submitted but only {acked} of {n} replicas acknowledged it "
            f"within {timeout}s: a failover now could lose it; "
            "submitting again with the same run_id is safe"
        )
