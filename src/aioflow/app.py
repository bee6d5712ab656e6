"""Kept so the documented path ``aioflow.app`` works: see ``aioflow.definitions.app``,
``aioflow.store.connect``.
"""

from .definitions.app import *  # noqa: F403
from .store.connect import *  # noqa: F403
