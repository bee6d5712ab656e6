"""Kept so the documented path ``aioflow.versions`` works: see
``aioflow.definitions.versions``, ``aioflow.engine.registry``,
``aioflow.worker.parking``.
"""

from .definitions.versions import *  # noqa: F403
from .engine.registry import *  # noqa: F403
from .worker.parking import *  # noqa: F403
