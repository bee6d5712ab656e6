"""A one-vertex flow whose node takes a moment and tells which process ran it.

Loaded by tests/test_supervisor.py as ``tests.apps.slow_app:app``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aioflow

slow = aioflow.Flow("slow")


@slow.node
async def nap(data: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(data.get("sleep", 0.0))
    return {"n": data["n"], "pid": os.getpid()}


app = aioflow.App(flows=[slow])
