"""A diamond whose every vertex records the pid of the process that ran it.

Loaded by tests/test_multiprocess.py as ``tests.apps.diamond_app:app``.
"""

from __future__ import annotations

import os
from typing import Any

import aioflow

diamond = aioflow.Flow("diamond")


@diamond.node
async def top(data: dict[str, int]) -> dict[str, Any]:
    return {"n": data["n"], "pids": [os.getpid()]}


@diamond.node(after=top)
async def left(d: dict[str, Any]) -> dict[str, Any]:
    return {"v": d["n"] * 2, "pids": [*d["pids"], os.getpid()]}


@diamond.node(after=top)
def right(d: dict[str, Any]) -> dict[str, Any]:  # a plain def: runs in a thread
    return {"v": d["n"] * 3, "pids": [*d["pids"], os.getpid()]}


@diamond.node(after=[left, right])
async def join(d: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pids = d["left"]["pids"] + d["right"]["pids"] + [os.getpid()]
    return {"sum": d["left"]["v"] + d["right"]["v"], "pids": pids}


app = aioflow.App(flows=[diamond])
