"""The HTTP gateway (aiohttp): start runs, show their state, steer them."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from . import codec, tracing
from .engine import REDIS_ERRORS, Engine, register
from .errors import (
    AioflowError,
    InvalidCallbackUrl,
    InvalidCursor,
    InvalidRunId,
    InvalidTransition,
    RedisUnavailable,
    RunNotFound,
    UnknownFlow,
)
from .keys import RunId, check_flow_name
from .model import Flow
from .settings import Settings
from .status import Status
from .topology import RedisClient

log = logging.getLogger("aioflow.gateway")

MAX_WAIT = 300.0
ENGINE = web.AppKey("engine", Engine)
SETTINGS = web.AppKey("settings", Settings)


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = doc if isinstance(doc, bytes) else codec.dumps(doc)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _error(status: int, error: str, detail: str) -> web.Response:
    return _json({"error": error, "detail": detail}, status)


_STATUS: list[tuple[type[AioflowError], int, str]] = [
    (UnknownFlow, 404, "unknown_flow"),
    (RunNotFound, 404, "run_not_found"),
    (InvalidRunId, 400, "invalid_id"),
    (InvalidCallbackUrl, 400, "invalid_callback_url"),
    (InvalidCursor, 400, "invalid_cursor"),
    (InvalidTransition, 409, "invalid_transition"),
    (RedisUnavailable, 503, "redis_unavailable"),
]


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except web.HTTPException as e:
        if e.status >= 400 and e.content_type != "application/json":
            return _error(e.status, e.reason.lower().replace(" ", "_"), e.text or e.reason)
        raise
    except REDIS_ERRORS as e:
        return _error(503, "redis_unavailable", f"Redis is unavailable: {e}")
    except AioflowError as e:
        for cls, status, code in _STATUS:
            if isinstance(e, cls):
                return _error(status, code, str(e))
        log.exception("error handling %s %s", request.method, request.path)
        return _error(500, "internal", type(e).__name__)
    except Exception as e:
        log.exception("error handling %s %s", request.method, request.path)
        return _error(500, "internal", type(e).__name__)


def _engine(request: web.Request) -> Engine:
    return request.app[ENGINE]


def _flow_name(request: web.Request) -> str:
    return check_flow_name(request.match_info["name"])


def _run_id(request: web.Request) -> RunId:
    return RunId.parse(request.match_info["run_id"], flow=_flow_name(request))


def _options(request: web.Request) -> dict[str, list[str]]:
    opts: dict[str, list[str]] = {}
    for k, v in request.query.items():
        opts.setdefault(k, []).append(v)
    opts.pop("wait", None)
    return opts


def _result_response(stored: bytes, rid: RunId) -> web.Response:
    headers = {"X-Run-Id": str(rid)}
    if stored[:1] == b"b":
        return web.Response(
            body=stored[1:], content_type="application/octet-stream", headers=headers
        )
    return _json(codec.to_json_bytes(stored), headers=headers)


@web.middleware
async def signed(request: web.Request, handler: Any) -> web.StreamResponse:
    """With ``hmac_secret`` set, every POST needs ``X-Hub-Signature-256``."""
    secret = request.app[SETTINGS].hmac_secret
    if secret and request.method == "POST":
        raw = await request.read()
        sig = request.headers.get("X-Hub-Signature-256", "")
        want = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig.encode("utf-8", "surrogateescape"), want.encode()):
            return _error(
                401,
                "unauthorized",
                "missing or wrong X-Hub-Signature-256 (sha256=HMAC of the body)",
            )
    return await handler(request)  # type: ignore[no-any-return]


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if request.content_type == "application/json":
        if not raw:
            return None
        try:
            return codec.loads(raw)
        except orjson.JSONDecodeError as e:
            raise web.HTTPBadRequest(text=f"malformed JSON body: {e}") from None
    return raw


async def start_run(request: web.Request) -> web.Response:
    engine = _engine(request)
    name = _flow_name(request)
    data = await _body(request)
    wait_raw = request.query.get("wait")
    wait: float | None = None
    if wait_raw is not None:
        try:
            wait = min(max(float(wait_raw), 0.0), MAX_WAIT)
        except ValueError:
            raise web.HTTPBadRequest(
                text=f"wait must be a number of seconds, got {wait_raw!r}"
            ) from None
    run_key = request.headers.get("X-Run-Id")
    callback = request.headers.get("X-Callback-Url")
    options = _options(request)
    if wait is None:
        rid, _ = await engine.submit(
            name, data, run_id=run_key, options=options, callback_url=callback
        )
        return _json({"run_id": str(rid)}, 202, headers={"X-Run-Id": str(rid)})
    rid, outcome = await engine.execute(
        name, data, timeout=wait, run_id=run_key, options=options, callback_url=callback
    )
    if outcome is None:
        return _json({"run_id": str(rid), "status": "running"}, 202, headers={"X-Run-Id": str(rid)})
    if outcome.status is Status.COMPLETED:
        return _result_response(outcome.payload, rid)
    if outcome.status is Status.STOPPED:
        return _json(
            {"error": "run_stopped", "detail": f"run {rid} was stopped", "run_id": str(rid)}, 409
        )
    err = codec.loads(outcome.payload) if outcome.payload else {}
    return _json(
        {
            "error": "run_failed",
            "detail": f"run {rid} failed at vertex {err.get('vertex')!r}: "
            f"{err.get('type')}: {err.get('message')}",
            "run_id": str(rid),
            **err,
        },
        500,
        {"X-Run-Id": str(rid)},
    )


async def run_state(request: web.Request) -> web.Response:
    state = await _engine(request).state(_run_id(request))
    return _json(state.to_json())


async def run_control(request: web.Request) -> web.Response:
    action = request.match_info["action"]
    if action not in ("pause", "resume", "stop", "retry"):
        raise web.HTTPNotFound(text=f"unknown action {action!r}")
    rid = _run_id(request)
    if action == "retry":
        n = await _engine(request).retry(rid)
        return _json({"run_id": str(rid), "status": "running", "requeued": n})
    status = await _engine(request).control(rid, action)
    return _json({"run_id": str(rid), "status": status.value})


async def list_runs(request: web.Request) -> web.Response:
    name = _flow_name(request)
    q = request.query
    try:
        status = Status(q["status"]) if q.get("status") else None
        limit = int(q.get("limit", "20"))
        cursor = q.get("cursor") or None
    except ValueError as e:
        raise web.HTTPBadRequest(text=str(e)) from None
    runs, nxt = await _engine(request).runs(name, status=status, limit=limit, cursor=cursor)
    return _json(
        {
            "runs": [
                {
                    "run_id": r.run_id,
                    "status": r.status.value,
                    "created": r.created,
                    "ended": r.ended,
                }
                for r in runs
            ],
            "next_cursor": nxt,
        }
    )


async def dead_letters(request: web.Request) -> web.Response:
    try:
        limit = max(1, min(int(request.query.get("limit", "100")), 1000))
    except ValueError as e:
        raise web.HTTPBadRequest(text=str(e)) from None
    return _json({"dead_letters": await _engine(request).dead_letters(limit)})


async def replay_dead_letter(request: web.Request) -> web.Response:
    run_id = await _engine(request).replay(request.match_info["id"])
    return _json({"run_id": run_id, "status": "running"})


async def metrics(request: web.Request) -> web.Response:
    engine = _engine(request)
    lines = [
        "# HELP aioflow_stream_length Entries in a flow partition's stream.",
        "# TYPE aioflow_stream_length gauge",
        "# HELP aioflow_pending Messages delivered to a worker and not yet acknowledged.",
        "# TYPE aioflow_pending gauge",
        "# HELP aioflow_dead_letters Entries in a flow partition's dead-letter stream.",
        "# TYPE aioflow_dead_letters gauge",
        "# HELP aioflow_delayed Messages waiting in the delayed set (retries, delayed starts).",
        "# TYPE aioflow_delayed gauge",
    ]
    for info in await engine.flows():
        for p in range(info.partitions):
            tag = f"af:{{{info.name}:{p}}}"
            async with engine.redis.pipeline(transaction=False) as pipe:
                pipe.xlen(f"{tag}:q")
                pipe.xpending(f"{tag}:q", "workers")
                pipe.xlen(f"{tag}:dlq")
                pipe.zcard(f"{tag}:z")
                length, pending, dlq, delayed = await pipe.execute(raise_on_error=False)
            labels = f'{{flow="{info.name}",partition="{p}"}}'
            pend = pending.get("pending", 0) if isinstance(pending, dict) else 0
            for name, value in (
                ("aioflow_stream_length", length),
                ("aioflow_pending", pend),
                ("aioflow_dead_letters", dlq),
                ("aioflow_delayed", delayed),
            ):
                if isinstance(value, int):
                    lines.append(f"{name}{labels} {value}")
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def flow_definition(request: web.Request) -> web.Response:
    info = await _engine(request).flow_info(_flow_name(request))
    return _json(info.definition)


async def list_flows(request: web.Request) -> web.Response:
    flows = await _engine(request).flows()
    return _json({"flows": [{"name": f.name, "partitions": f.partitions} for f in flows]})


async def healthz(request: web.Request) -> web.Response:
    try:
        await _engine(request).redis.ping()
    except REDIS_ERRORS as e:
        return _json({"ok": False, "redis": False, "detail": str(e)}, 503)
    return _json({"ok": True, "redis": True})


async def dashboard(request: web.Request) -> web.Response:
    html = (resources.files("aioflow") / "static" / "dashboard.html").read_bytes()
    return web.Response(body=html, content_type="text/html")


# temporary: issue9 adds this (static files of the dashboard, by allowlist)
_STATIC = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "favicon.svg": "image/svg+xml",
}


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "favicon.svg")
    if name not in _STATIC:
        raise web.HTTPNotFound(text=f"no static file {name!r}")
    body = (resources.files("aioflow") / "static" / name).read_bytes()
    return web.Response(body=body, content_type=_STATIC[name])


def create_app(
    redis: RedisClient,
    *,
    flows: list[Flow] | None = None,
    settings: Settings | None = None,
) -> web.Application:
    """The gateway as an aiohttp application. ``flows`` are registered at startup
    (definitions become visible to clients); ``redis`` is not closed by the app."""
    settings = settings or Settings()
    app = web.Application(client_max_size=settings.max_body, middlewares=[errors, signed])
    engine = Engine(
        redis,
        result_ttl=settings.result_ttl,
        tracing=tracing.configure(settings.tracing),
        submit_replicas=settings.submit_replicas,
        submit_replicas_timeout=settings.submit_replicas_timeout,
    )
    app[ENGINE] = engine
    app[SETTINGS] = settings

    async def register_when_up() -> None:
        backoff = 0.05
        while True:
            try:
                await engine.start()
                await register(engine.redis, flows or [], fast=engine.fast)
                return
            except REDIS_ERRORS as e:
                log.warning("cannot register flows yet (%s); retrying in %.1fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    registering: list[asyncio.Task[None]] = []

    async def on_startup(_: web.Application) -> None:
        # the gateway serves (503 while Redis is away) even if Redis is not up yet
        if flows:
            try:
                await engine.start()
                await register(engine.redis, flows, fast=engine.fast)
            except REDIS_ERRORS:
                registering.append(asyncio.create_task(register_when_up()))

    async def on_cleanup(_: web.Application) -> None:
        for t in registering:
            t.cancel()
        await engine.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/", dashboard)
    app.router.add_get("/static/{name}", static_file)  # temporary: issue9 adds this
    app.router.add_get("/favicon.ico", static_file)  # temporary: issue9 adds this
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/flows", list_flows)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/dead-letters", dead_letters)
    app.router.add_post("/dead-letters/{id}/replay", replay_dead_letter)
    app.router.add_get("/flow/{name}", flow_definition)
    app.router.add_post("/flow/{name}", start_run)
    app.router.add_get("/flow/{name}/runs", list_runs)
    app.router.add_get("/flow/{name}/run/{run_id}", run_state)
    app.router.add_post("/flow/{name}/run/{run_id}/{action}", run_control)
    return app
