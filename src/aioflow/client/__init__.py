"""The Python client: the same methods straight through Redis or over HTTP."""

from .client import Client

__all__ = ["Client"]
