"""The worker: reading vertex messages, running node functions as asyncio tasks,
applying completions, housekeeping, and the processes around it (supervisor,
health probe)."""

from .worker import Worker as Worker
from .worker import check_server as check_server

__all__ = ["Worker", "check_server"]
