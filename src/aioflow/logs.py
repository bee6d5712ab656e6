"""Kept so the documented path ``aioflow.logs`` works: see ``aioflow.cli.logs``."""

from .cli.logs import *  # noqa: F403
