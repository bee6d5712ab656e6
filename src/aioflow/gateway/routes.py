"""The HTTP gateway (aiohttp): start runs, show their state, steer them."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import OutOfMemoryError

from aioflow.core import codec
from aioflow.core.aio import cancel_and_wait
from aioflow.core.errors import (
    AioflowError,
    BatchIncomplete,
    Forbidden,
    InvalidBatch,
    InvalidCallbackUrl,
    InvalidCursor,
    InvalidInput,
    InvalidPriority,
    InvalidRunId,
    InvalidTransition,
    LimitExceeded,
    RedisFull,
    RedisUnavailable,
    RunNotFound,
    Unauthorized,
    UnknownFlow,
    UnknownSchedule,
)
from aioflow.core.settings import Settings
from aioflow.definitions.model import Flow
from aioflow.definitions.status import Status
from aioflow.engine import registry as versions
from aioflow.engine import schedule
from aioflow.engine.engine import Engine, register, translate
from aioflow.observability import tracing
from aioflow.observability.metrics import GatewayMetrics
from aioflow.observability.metrics import response as metrics_response
from aioflow.store.keys import RunId, check_event_name, check_flow_name
from aioflow.store.outage import REDIS_ERRORS, Episode
from aioflow.store.topology import RedisClient

from . import openapi
from .guard import GUARD, authorize, install

log = logging.getLogger("aioflow.gateway")

INTEGER_RE = re.compile(r"[0-9]{1,9}")

MAX_WAIT = 300.0
MAX_PAGE = 500  # GET /flow/{name}/runs
MAX_DEAD_LETTERS = 1000  # GET /dead-letters, per partition
ENGINE = web.AppKey("engine", Engine)
SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", GatewayMetrics)
OPENAPI = web.AppKey("openapi", bytes)  # the document, with the typed flows' operations


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = doc if isinstance(doc, bytes) else codec.dumps(doc)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _error(status: int, error: str, detail: str) -> web.Response:
    return _json({"error": error, "detail": detail}, status)


_STATUS: list[tuple[type[AioflowError], int, str]] = [
    (UnknownFlow, 404, "unknown_flow"),
    (UnknownSchedule, 404, "unknown_schedule"),
    (RunNotFound, 404, "run_not_found"),
    (InvalidRunId, 400, "invalid_id"),
    (InvalidBatch, 400, "invalid_batch"),
    (InvalidCallbackUrl, 400, "invalid_callback_url"),
    (InvalidPriority, 400, "invalid_priority"),
    (InvalidCursor, 400, "invalid_cursor"),
    (InvalidTransition, 409, "invalid_transition"),
    (LimitExceeded, 413, "value_too_large"),
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (RedisFull, 503, "redis_full"),  # before its base class
    (RedisUnavailable, 503, "redis_unavailable"),
]


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        async with translate():  # Redis errors as aioflow's (a full Redis: RedisFull)
            return await handler(request)  # type: ignore[no-any-return]
    except web.HTTPException as e:
        if e.status >= 400 and e.content_type != "application/json":
            return _error(e.status, e.reason.lower().replace(" ", "_"), e.text or e.reason)
        raise
    except AioflowError as e:
        if isinstance(e, RedisFull):
            request.app[METRICS].redis_full.inc()
        if isinstance(e, InvalidInput):  # its detail is the list of validation errors
            return _json({"error": "invalid_input", "detail": e.errors}, 422)
        if isinstance(e, InvalidBatch) and e.index is not None:
            doc = {"error": "invalid_batch", "detail": str(e), "index": e.index}
            return _json({**doc, "errors": e.errors} if e.errors else doc, 400)
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


async def _run_id(request: web.Request) -> RunId:
    """The run of a ``/flow/{name}/run/{run_id}`` route: a full run id or the caller's own."""
    return await _engine(request).run_id(request.match_info["run_id"], flow=_flow_name(request))


def _bad_request(error: str, detail: str) -> web.HTTPBadRequest:
    doc = {"error": error, "detail": detail}
    return web.HTTPBadRequest(text=codec.dumps(doc).decode(), content_type="application/json")


def _invalid(param: str, detail: str) -> web.HTTPBadRequest:
    """400 ``invalid_<param>``: a query parameter outside what ``detail`` says is allowed."""
    return _bad_request(f"invalid_{param}", detail)


def _wait(request: web.Request) -> float | None:
    raw = request.query.get("wait")
    if raw is None:
        return None
    try:
        wait = float(raw)
    except ValueError:
        wait = math.nan
    if not math.isfinite(wait) or wait < 0:  # a NaN or infinite timer never fires
        raise _invalid(
            "wait",
            f"wait must be a number of seconds, finite and >= 0 (above {MAX_WAIT:g} it "
            f"waits {MAX_WAIT:g}), got {raw!r}",
        )
    return min(wait, MAX_WAIT)


def _limit(request: web.Request, default: int, most: int) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    if not INTEGER_RE.fullmatch(raw) or not 1 <= int(raw) <= most:
        raise _invalid("limit", f"limit must be an integer from 1 to {most}, got {raw!r}")
    return int(raw)


def _status(request: web.Request) -> Status | None:
    raw = request.query.get("status")
    if raw is None:
        return None
    try:
        return Status(raw)
    except ValueError:
        valid = ", ".join(s.value for s in Status)
        raise _invalid(
            "status", f"status must be one of {valid} (or absent for all), got {raw!r}"
        ) from None


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


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if request.content_type == "application/json":
        if not raw.strip():
            raise _bad_request(
                "empty_body",
                "an application/json body must hold a JSON value (null for no input); "
                "send another content type for raw bytes",
            )
        try:
            return codec.loads(raw)
        except orjson.JSONDecodeError as e:
            raise _bad_request("invalid_json", f"malformed JSON body: {e}") from None
    return raw


async def start_run(request: web.Request) -> web.Response:
    engine = _engine(request)
    name = _flow_name(request)
    wait = _wait(request)
    data = await _body(request)
    run_key = request.headers.get("X-Run-Id")
    callback = request.headers.get("X-Callback-Url")
    if callback is not None:
        await request.app[GUARD].policy.check(callback)
    priority = request.headers.get("X-Priority")  # high | default | low
    options = _options(request)
    if wait is None:
        rid, _ = await engine.submit(
            name, data, run_id=run_key, options=options, callback_url=callback, priority=priority
        )
        return _json({"run_id": str(rid)}, 202, headers={"X-Run-Id": str(rid)})
    rid, outcome = await engine.execute(
        name,
        data,
        timeout=wait,
        run_id=run_key,
        options=options,
        callback_url=callback,
        priority=priority,
    )
    if outcome is None:
        return _json({"run_id": str(rid), "status": "running"}, 202, headers={"X-Run-Id": str(rid)})
    if outcome.status is Status.COMPLETED:
        return _result_response(outcome.payload, rid)
    if outcome.status is Status.STOPPED:
        return _json(
            {"error": "run_stopped", "detail": f"run {rid} was stopped", "run_id": str(rid)}, 409
        )
    err = request.app[GUARD].public_error(codec.loads(outcome.payload) if outcome.payload else {})
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


async def start_batch(request: web.Request) -> web.Response:
    """``POST /flow/{name}/batch``: a JSON array of inputs, or ``{"inputs": [...],
    "run_ids": [...]}`` (an id or null per input); answers 202 ``{"run_ids": [...]}``."""
    name = _flow_name(request)
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="a batch is a JSON body (application/json)")
    body = await _body(request)
    run_ids: Any = None
    if isinstance(body, dict) and isinstance(body.get("inputs"), list):
        inputs, run_ids = body["inputs"], body.get("run_ids")
        if run_ids is not None and not (
            isinstance(run_ids, list) and all(r is None or isinstance(r, str) for r in run_ids)
        ):
            raise InvalidBatch("run_ids must be a list of strings or nulls, one per input")
    elif isinstance(body, list):
        inputs = body
    else:
        raise InvalidBatch(
            'a batch is a JSON array of inputs or {"inputs": [...], "run_ids": [...]}'
        )
    limit = request.app[SETTINGS].max_batch
    if len(inputs) > limit:
        return _error(413, "batch_too_large", f"{len(inputs)} runs in one batch; at most {limit}")
    try:
        pairs = await _engine(request).submit_many(
            name, inputs, options=_options(request), run_ids=run_ids
        )
    except BatchIncomplete as e:
        doc = {"error": "batch_incomplete", "detail": str(e), "submitted": e.submitted}
        return _json({**doc, "unknown": list(e.unknown.values())}, 503)
    return _json({"run_ids": [str(rid) for rid, _ in pairs]}, 202)


EVENT_FIELDS = frozenset({"key", "data", "id"})


async def send_event(request: web.Request) -> web.Response:
    """``POST /events/{name}``: ``{"key", "data", "id"}`` (each optional); answers 200
    ``{"resolved": n, "started": [run ids]}``."""
    name = check_event_name(request.match_info["name"])
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            text='an event is a JSON body (application/json): {"key", "data", "id"}'
        )
    doc = await _body(request)
    if not isinstance(doc, dict) or not set(doc) <= EVENT_FIELDS:
        raise _bad_request(
            "invalid_event",
            'an event is a JSON object with "key" (a string or null), "data" (any JSON) '
            'and "id" (a string or null), each optional, and nothing else',
        )
    key, eid = doc.get("key"), doc.get("id")
    if not isinstance(key, str | None) or not isinstance(eid, str | None):
        raise _bad_request("invalid_event", '"key" and "id" are strings or null')
    answer = await _engine(request).send_event(name, doc.get("data"), key=key, event_id=eid)
    return _json(answer)


async def signal_run(request: web.Request) -> web.Response:
    """``POST /flow/{name}/run/{run_id}/signal/{vertex}``: the body is the data."""
    rid = await _run_id(request)
    vertex = request.match_info["vertex"]
    taken = await _engine(request).signal(rid, vertex, await _body(request))
    return _json({"run_id": str(rid), "vertex": vertex, "taken": taken})


async def run_state(request: web.Request) -> web.Response:
    state = await _engine(request).state(await _run_id(request))
    if state.error is not None:
        state.error = request.app[GUARD].public_error(state.error)
    return _json(state.to_json())


async def run_control(request: web.Request) -> web.Response:
    action = request.match_info["action"]
    if action not in ("pause", "resume", "stop", "retry"):
        raise web.HTTPNotFound(text=f"unknown action {action!r}")
    rid = await _run_id(request)
    if action == "retry":
        n = await _engine(request).retry(rid)
        return _json({"run_id": str(rid), "status": "running", "requeued": n})
    status = await _engine(request).control(rid, action)
    if status is Status.STOPPED:
        request.app[METRICS].finished.labels(rid.flow, "stopped").inc()
    return _json({"run_id": str(rid), "status": status.value})


async def list_runs(request: web.Request) -> web.Response:
    name = _flow_name(request)
    status = _status(request)
    limit = _limit(request, 20, MAX_PAGE)
    cursor = request.query.get("cursor") or None
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
    limit = _limit(request, 100, MAX_DEAD_LETTERS)
    return _json({"dead_letters": await _engine(request).dead_letters(limit)})


async def replay_dead_letter(request: web.Request) -> web.Response:
    run_id = await _engine(request).replay(request.match_info["id"])
    return _json({"run_id": run_id, "status": "running"})


async def metrics(request: web.Request) -> web.Response:
    engine = _engine(request)
    m = request.app[METRICS]
    for info in await engine.flows():
        for p in range(info.partitions):
            tag = f"af:{{{info.name}:{p}}}"
            async with engine.redis.pipeline(transaction=False) as pipe:
                pipe.xlen(f"{tag}:q")
                pipe.xpending(f"{tag}:q", "workers")
                pipe.xlen(f"{tag}:dlq")
                pipe.zcard(f"{tag}:z")
                for q in (f"{tag}:qh", f"{tag}:ql"):  # the priorities' streams count too
                    pipe.xlen(q)
                    pipe.xpending(q, "workers")
                length, pending, dlq, delayed, *prio = await pipe.execute(raise_on_error=False)
            if isinstance(length, int):
                length += sum(n for n in prio[::2] if isinstance(n, int))
            pend = sum(
                pe.get("pending", 0) for pe in [pending, *prio[1::2]] if isinstance(pe, dict)
            )
            for gauge, value in (
                (m.stream_length, length),
                (m.pending, pend),
                (m.dead_letters, dlq),
                (m.delayed, delayed),
            ):
                if isinstance(value, int):
                    gauge.labels(info.name, str(p)).set(value)
    return metrics_response(m.registry)


async def flow_definition(request: web.Request) -> web.Response:
    engine = _engine(request)
    name = _flow_name(request)
    info = await engine.flow_info(name)
    doc = dict(info.definition)
    doc.update(await versions.listing(engine.redis, name, window=engine.pins.window))
    doc["schedules"] = [st.to_json() for st in await schedule.states(engine, name)]
    return _json(doc)


async def schedule_control(request: web.Request) -> web.Response:
    engine = _engine(request)
    action = request.match_info["action"]
    if action not in ("pause", "resume"):
        raise web.HTTPNotFound(text=f"unknown action {action!r}")
    fn = schedule.pause if action == "pause" else schedule.resume
    st = await fn(engine, _flow_name(request), request.match_info["schedule"])
    return _json(st.to_json())


async def list_flows(request: web.Request) -> web.Response:
    flows = await _engine(request).flows()
    return _json({"flows": [{"name": f.name, "partitions": f.partitions} for f in flows]})


async def healthz(request: web.Request) -> web.Response:
    """200 ``{"ok": true, "redis": true}``; 503 with ``"redis": false`` when Redis does
    not answer, ``"redis": "full"`` when it answers but refuses writes (maxmemory)."""
    try:
        full = await _engine(request).memory_full()
    except REDIS_ERRORS as e:
        return _json({"ok": False, "redis": False, "detail": str(e)}, 503)
    if full:
        detail = f"Redis is full, writes are refused: {'; '.join(full)}"
        return _json({"ok": False, "redis": "full", "detail": detail}, 503)
    return _json({"ok": True, "redis": True})


async def dashboard(request: web.Request) -> web.Response:
    html = (resources.files("aioflow.gateway") / "static" / "dashboard.html").read_bytes()
    return web.Response(body=html, content_type="text/html")


STATIC_FILES = {
    "dashboard.js": "text/javascript",
    "schema.js": "text/javascript",
    "dashboard.css": "text/css",
    "favicon.svg": "image/svg+xml",
}


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "favicon.svg")
    content_type = STATIC_FILES.get(name)
    if content_type is None:  # an allowlist: nothing else of the package is reachable
        raise web.HTTPNotFound(text=f"no static file {name!r}")
    body = (resources.files("aioflow.gateway") / "static" / name).read_bytes()
    return web.Response(
        body=body,
        content_type=content_type,
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


async def openapi_document(request: web.Request) -> web.Response:
    return _json(request.app[OPENAPI])


def create_app(
    redis: RedisClient,
    *,
    flows: list[Flow] | None = None,
    settings: Settings | None = None,
) -> web.Application:
    """The gateway as an aiohttp application. ``flows`` are registered at startup
    (definitions become visible to clients); ``redis`` is not closed by the app."""
    settings = settings or Settings()
    app = web.Application(client_max_size=settings.max_body, middlewares=[errors, authorize])
    engine = Engine.from_settings(
        redis, settings, tracing=tracing.configure(settings.tracing, role="gateway")
    )
    gauges = app[METRICS] = GatewayMetrics()
    engine.on_submitted = gauges.on_submitted
    app[ENGINE] = engine
    app[SETTINGS] = settings
    app[OPENAPI] = openapi.document_bytes(tuple(flows or ()))
    engine.catalog.hold(flows or ())  # its typed flows' inputs are validated at the door
    install(app, settings, engine)

    async def register_when_up() -> None:
        episode = Episode(log, "registering the flows")
        while True:
            try:
                await engine.start()
                await register(engine.redis, flows or [], fast=engine.fast)
                episode.ok()
                return
            except (*REDIS_ERRORS, OutOfMemoryError) as e:
                await asyncio.sleep(episode.failed(e))

    registering: list[asyncio.Task[None]] = []
    ticker = schedule.Scheduler(redis, [f.name for f in flows or []], engine.clock, engine=engine)

    async def on_startup(_: web.Application) -> None:
        if flows:  # ticks what is registered: it waits for the registration below
            registering.append(asyncio.create_task(ticker.run(), name="aioflow-sched"))
        # the gateway serves (503 while Redis is away) even if Redis is not up yet
        if flows:
            try:
                await engine.start()
                await register(engine.redis, flows, fast=engine.fast)
            except REDIS_ERRORS:
                registering.append(asyncio.create_task(register_when_up()))
            registering.append(
                asyncio.create_task(versions.keep_seen(engine.backend, flows, settings))
            )

    async def on_cleanup(_: web.Application) -> None:
        await cancel_and_wait(registering)
        await asyncio.gather(*registering, return_exceptions=True)
        await engine.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/", dashboard)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/favicon.ico", static_file)
    app.router.add_get("/openapi.json", openapi_document)
    app.router.add_get("/flows", list_flows)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/dead-letters", dead_letters)
    app.router.add_post("/dead-letters/{id}/replay", replay_dead_letter)
    app.router.add_get("/flow/{name}", flow_definition)
    app.router.add_post("/flow/{name}", start_run)
    app.router.add_post("/flow/{name}/batch", start_batch)
    app.router.add_get("/flow/{name}/runs", list_runs)
    app.router.add_get("/flow/{name}/run/{run_id}", run_state)
    app.router.add_post("/flow/{name}/run/{run_id}/{action}", run_control)
    # a vertex address may hold '/' (flow/run/id/signal/group[key]/name)
    app.router.add_post("/flow/{name}/run/{run_id}/signal/{vertex:.+}", signal_run)
    app.router.add_post("/events/{name}", send_event)
    app.router.add_post("/flow/{name}/schedule/{schedule}/{action}", schedule_control)
    return app
