"""What a worker's loops retry after a pause: Redis unreachable or stalled, or
refusing writes at maxmemory (a refused script applied nothing: see
:mod:`aioflow.store.scripts`). The lean connections raise OOM replies as redis-py
does, as ``OutOfMemoryError``."""

from __future__ import annotations

from redis.exceptions import OutOfMemoryError

from aioflow.store.outage import REDIS_ERRORS

TRANSIENT: tuple[type[BaseException], ...] = (*REDIS_ERRORS, OutOfMemoryError)
