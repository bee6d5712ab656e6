"""Steering a run: pause, resume or stop it, and retry it once it failed."""

from __future__ import annotations

from collections.abc import Callable

from aioflow.core.errors import InvalidTransition, RunNotFound
from aioflow.definitions.status import Status
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import Backend

from .catalog import Catalog
from .rerun import rerun


async def control(
    backend: Backend, rid: RunId, action: str, *, clock: Callable[[], float], result_ttl: float
) -> Status:
    """See :meth:`aioflow.engine.engine.Engine.control`."""
    await backend.start()
    res = await SCRIPTS.call(
        backend.fast,
        "control",
        rid.stream,
        rid.key,
        action,
        repr(clock()),
        int(result_ttl * 1000),
    )
    code, status = res[0].decode(), res[1].decode()
    if code != "ok":
        if not status:
            raise RunNotFound(f"run {rid} not found (it never existed or it expired)")
        raise InvalidTransition(f"cannot {action} run {rid}: it is {status}")
    if action == "stop":
        await backend.redis.publish(keys.CONTROL, f"stop {rid}")
    return Status(status)


async def retry(backend: Backend, catalog: Catalog, rid: RunId) -> int:
    """See :meth:`aioflow.engine.engine.Engine.retry`."""
    return await rerun(backend.redis, rid, await catalog.run_plan(rid))
