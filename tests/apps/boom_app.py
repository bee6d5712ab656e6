"""A flow that fails on purpose. Loaded by tests/test_cli_tracebacks.py as
``tests.apps.boom_app:app``."""

from __future__ import annotations

from typing import Any

import aioflow

boom = aioflow.Flow("boom")


@boom.node
async def explode(data: Any) -> Any:
    raise ValueError("on purpose")


app = aioflow.App(flows=[boom])
