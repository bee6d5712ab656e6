"""Version 1 of the flow "shop": start -> finish. Every vertex records the version
and the pid that ran it, so a test sees which graph and which worker did each step.

Loaded by tests/test_versions.py as ``tests.apps.shop_v1:app``; shop_v2 is the next deploy.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aioflow

shop = aioflow.Flow("shop")


@shop.node
async def start(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("slow"):
        await asyncio.sleep(float(data["slow"]))
    return {"path": [["v1", "start", os.getpid()]]}


@shop.node(after=start)
async def finish(d: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "path": [*d["path"], ["v1", "finish", os.getpid()]]}


app = aioflow.App(flows=[shop])
