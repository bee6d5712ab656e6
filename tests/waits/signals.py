"""Sending a signal from a test, straight through the engine's steering."""

from __future__ import annotations

from typing import Any

import aioflow
from aioflow.engine import steering
from aioflow.store.keys import RunId


async def signal(client: aioflow.Client, run_id: str, vertex: str, data: Any) -> bool:
    e = client.engine
    return await steering.signal(
        e.backend,
        e.catalog,
        RunId.parse(run_id),
        vertex,
        data,
        clock=e.clock,
        max_value=e.max_value,
    )
