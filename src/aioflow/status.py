"""Kept so the documented path ``aioflow.status`` works: see ``aioflow.definitions.status``."""

from .definitions.status import *  # noqa: F403
