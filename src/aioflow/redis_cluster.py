"""Kept so the documented path ``aioflow.redis_cluster`` works: see
``aioflow.store.redis_cluster``.
"""

from .store.redis_cluster import *  # noqa: F403
