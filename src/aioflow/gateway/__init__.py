"""The HTTP gateway (aiohttp): routes, the guard in front of them, the OpenAPI
document and the dashboard's static files."""

from .routes import create_app

__all__ = ["create_app"]
