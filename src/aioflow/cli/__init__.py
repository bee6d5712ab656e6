"""The ``aioflow`` command: parsing, the long-running commands (serve, worker, dev),
the one-shot commands, logging and ``dev --reload``."""

from .command import main

__all__ = ["main"]
