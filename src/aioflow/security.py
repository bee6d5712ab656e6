"""Kept so the documented path ``aioflow.security`` works: see ``aioflow.core.security``."""

from .core.security import *  # noqa: F403
