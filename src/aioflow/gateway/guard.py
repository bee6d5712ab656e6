"""The gateway's guard: who may call which route, and the headers every answer carries.

A route needs nothing (``/healthz``, the dashboard page and its static files),
``read`` (every other GET), ``run`` (starting runs, sending events and signals)
or ``admin`` (every other POST). With ``hmac_secret`` set a POST is authorized
by a valid, fresh, unused ``X-Aioflow-Signature``; with ``api_tokens`` set by a
bearer token of the needed scope. A POST that carries a signature header is judged by it alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from aioflow.core import codec
from aioflow.core.errors import Forbidden, Unauthorized
from aioflow.core.security import (
    SIGNATURE_HEADER,
    CallbackPolicy,
    RedisSource,
    ReplayGuard,
    Scope,
    Tokens,
    parse_secrets,
    verify,
)
from aioflow.core.settings import Settings

#: routes anyone may call: health, and the dashboard's page and assets (no data)
OPEN_ROUTES = frozenset({"/healthz", "/", "/static/{name}", "/favicon.ico"})
#: POST routes that start runs or feed them (events, signals); every other POST
#: steers runs and needs ``admin``
RUN_ROUTES = frozenset(
    {
        "/flow/{name}",
        "/flow/{name}/batch",
        "/events/{name}",
        "/flow/{name}/run/{run_id}/signal/{vertex}",
    }
)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class Guard:
    """What the middleware needs, built once from the settings."""

    secrets: tuple[bytes, ...]
    tokens: Tokens
    tolerance: float
    replay: ReplayGuard
    policy: CallbackPolicy
    expose_tracebacks: bool
    clock: Callable[[], float] = time.time

    @classmethod
    def from_settings(cls, settings: Settings, engine: RedisSource) -> Guard:
        return cls(
            secrets=parse_secrets(settings.hmac_secret),
            tokens=Tokens.parse(settings.api_tokens),
            tolerance=settings.signature_tolerance,
            replay=ReplayGuard(engine, tolerance=settings.signature_tolerance),
            policy=CallbackPolicy.from_settings(
                settings.callback_allow_private, settings.callback_hosts
            ),
            expose_tracebacks=settings.expose_tracebacks,
        )

    def public_error(self, err: dict[str, Any]) -> dict[str, Any]:
        """A run's error as it may leave over HTTP."""
        if self.expose_tracebacks or "traceback" not in err:
            return err
        return {k: v for k, v in err.items() if k != "traceback"}


GUARD = web.AppKey("guard", Guard)


def needed_scope(method: str, route: str | None) -> Scope | None:
    """The scope a request needs; None for an open route or no route (a 404/405)."""
    if route is None or route in OPEN_ROUTES:
        return None
    if method in ("GET", "HEAD"):
        return Scope.READ
    if method == "POST" and route in RUN_ROUTES:
        return Scope.RUN
    return Scope.ADMIN


def _refusal(status: int, error: str, detail: str, **extra: Any) -> web.Response:
    return web.Response(
        body=codec.dumps({"error": error, "detail": detail, **extra}),
        status=status,
        content_type="application/json",
    )


@web.middleware
async def authorize(request: web.Request, handler: Any) -> web.StreamResponse:
    guard = request.app[GUARD]
    resource = request.match_info.route.resource
    need = needed_scope(request.method, resource.canonical if resource is not None else None)
    if need is None or not (guard.secrets or guard.tokens):
        return await handler(request)  # type: ignore[no-any-return]
    try:
        header = request.headers.get(SIGNATURE_HEADER)
        bearer = guard.tokens and "Authorization" in request.headers
        if request.method == "POST" and guard.secrets and (header is not None or not bearer):
            now = guard.clock()
            raw = await request.read()
            sig = verify(header, raw, guard.secrets, now=now, tolerance=guard.tolerance)
            await guard.replay.accept(sig, now)
        elif guard.tokens:
            guard.tokens.check(request.headers.get("Authorization"), need)
    except Unauthorized as e:
        resp = _refusal(401, "unauthorized", str(e), reason=e.reason)
        if guard.tokens:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="aioflow"'
        return resp
    except Forbidden as e:
        return _refusal(403, "forbidden", str(e), reason="scope")
    return await handler(request)  # type: ignore[no-any-return]


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def install(app: web.Application, settings: Settings, engine: RedisSource) -> Guard:
    """Put the guard on ``app`` (its middleware must be in the app's list); replays
    are remembered through ``engine``'s Redis client."""
    guard = app[GUARD] = Guard.from_settings(settings, engine)
    app.on_response_prepare.append(add_security_headers)
    return guard
