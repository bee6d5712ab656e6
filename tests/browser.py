"""Driving the dashboard in real headless Chromium (Debian's ``chromium``) with Playwright.

Never ``playwright install``: the browser is the ``chromium`` binary on PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.served import Served, served

__all__ = ["Served", "browser", "csp", "needs_chromium", "page", "served"]

CSP = "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'"


@web.middleware
async def csp(request: web.Request, handler: Any) -> web.StreamResponse:
    """A strict Content-Security-Policy on every answer (as issue 9's gateway sends):
    an inline script, handler or style attribute in the page becomes a console error."""
    resp: web.StreamResponse = await handler(request)
    resp.headers["Content-Security-Policy"] = CSP
    return resp


CHROMIUM = shutil.which("chromium")
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH: apt-get install -y chromium (.ci/run does)"
)

try:
    from playwright.async_api import Browser, ConsoleMessage, Error, Page, async_playwright
except ImportError:  # pragma: no cover - playwright is in the dev extra
    async_playwright = None  # type: ignore[assignment]


@dataclass
class Console:
    """What the page reported: console errors and uncaught exceptions."""

    errors: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        def on_console(msg: ConsoleMessage) -> None:
            if msg.type == "error":
                self.errors.append(f"console: {msg.text}")

        def on_error(err: Error) -> None:
            self.errors.append(f"pageerror: {err}")

        page.on("console", on_console)
        page.on("pageerror", on_error)


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    if async_playwright is None:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    assert CHROMIUM is not None
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


@contextlib.asynccontextmanager
async def page(b: Browser, base: str) -> AsyncIterator[tuple[Page, Console]]:
    """A fresh page (own context: own sessionStorage) on the dashboard at ``base``;
    stop-confirmations are accepted."""
    ctx = await b.new_context(viewport={"width": 1400, "height": 900})
    try:
        pg = await ctx.new_page()
        pg.set_default_timeout(10_000)
        console = Console()
        console.attach(pg)
        pg.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await pg.goto(base + "/")
        yield pg, console
    finally:
        await ctx.close()
