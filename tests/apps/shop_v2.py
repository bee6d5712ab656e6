"""Version 2 of the flow "shop": start -> check -> finish, where ``finish`` keeps its
name but now means something else. See shop_v1.
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
    return {"path": [["v2", "start", os.getpid()]]}


@shop.node(after=start)
async def check(d: dict[str, Any]) -> dict[str, Any]:
    return {"path": [*d["path"], ["v2", "check", os.getpid()]]}


@shop.node(after=check)
async def finish(d: dict[str, Any]) -> dict[str, Any]:
    return {"version": 2, "path": [*d["path"], ["v2", "finish", os.getpid()]]}


app = aioflow.App(flows=[shop])
