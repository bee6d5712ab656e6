"""The gateway's HTTP API as an OpenAPI 3.1 document, built here in code and
served at ``GET /openapi.json``. tests/test_openapi.py fails when a route of
the gateway is missing here or this describes a route the gateway lacks."""

from __future__ import annotations

import functools
from typing import Any

from aioflow.core import codec

NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
RUN_KEY = r"^[A-Za-z0-9_-]{1,64}$"
# a full run id <flow>.<partition>.<key>, or the key alone (the id its caller chose)
RUN_REF = r"^([a-z0-9][a-z0-9_-]{0,63}\.[0-9]{1,4}\.)?[A-Za-z0-9_-]{1,64}$"

Security = list[dict[str, list[str]]]
_READ: Security = [{"bearer": []}]
_RUN: Security = [{"bearer": []}, {"signature": []}]
_ADMIN: Security = [{"bearer": []}, {"signature": []}]
_OPEN: Security = []


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, *codes: str) -> dict[str, Any]:
    """A JSON error response whose ``error`` is one of ``codes``."""
    schema: dict[str, Any] = {
        "allOf": [_ref("Error"), {"properties": {"error": {"enum": list(codes)}}}]
    }
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _json(description: str, schema: dict[str, Any], **headers: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        out["headers"] = headers
    return out


def _guarded(responses: dict[str, Any], security: list[dict[str, list[str]]]) -> dict[str, Any]:
    """Add the answers of the auth checks and of an unavailable Redis."""
    out = dict(responses)
    if security is not _OPEN:
        out["401"] = _error(
            "No valid credentials (``reason``: missing, malformed, stale, bad, replayed)",
            "unauthorized",
        )
        out["403"] = _error("The bearer token's scope is too weak", "forbidden")
    out.setdefault(
        "503",
        _error(
            "Redis is unavailable, or full (at maxmemory it refuses writes)",
            "redis_unavailable",
            "redis_full",
        ),
    )
    return out


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    security: list[dict[str, list[str]]],
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    op_id: str,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "security": security,
        "responses": _guarded(responses, security),
    }
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = body
    return op


def _path(name: str, description: str, pattern: str | None = None, **schema: Any) -> Any:
    s: dict[str, Any] = {"type": "string", **schema}
    if pattern:
        s["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "description": description, "schema": s}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_FLOW = _path("name", "Flow name", NAME, maxLength=64)
_RUN_ID = _path(
    "run_id",
    "The run id POST /flow/{name} answered, or the X-Run-Id its caller chose",
    RUN_REF,
    maxLength=134,
)
_BAD_ID = _error("Malformed flow name or run id", "invalid_id")
_UNKNOWN = _error("No such flow or run", "unknown_flow", "run_not_found")

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "description": "Machine-readable code"},
            "detail": {"type": "string"},
            "reason": {"type": "string", "description": "Why a request was refused (401)"},
        },
    },
    "RunStarted": {
        "type": "object",
        "required": ["run_id"],
        "properties": {"run_id": {"type": "string"}, "status": {"const": "running"}},
    },
    "RunError": {
        "type": "object",
        "description": "How a run failed; ``traceback`` only with expose_tracebacks",
        "properties": {
            "vertex": {"type": ["string", "null"]},
            "type": {"type": "string"},
            "message": {"type": "string"},
            "attempts": {"type": "integer"},
            "traceback": {"type": "string"},
        },
    },
    "RunFailed": {
        "allOf": [
            _ref("Error"),
            _ref("RunError"),
            {"properties": {"error": {"const": "run_failed"}, "run_id": {"type": "string"}}},
        ]
    },
    "RunState": {
        "type": "object",
        "required": ["run_id", "flow", "status", "vertices"],
        "properties": {
            "run_id": {"type": "string"},
            "flow": {"type": "string"},
            "status": _ref("Status"),
            "created": {"type": ["number", "null"]},
            "started": {"type": ["number", "null"]},
            "ended": {"type": ["number", "null"]},
            "vertices": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"status": {"type": "string"}, "attempts": {"type": "integer"}},
                },
            },
            "result": {"description": "The result (completed runs); bytes as {$bytes: base64}"},
            "error": _ref("RunError"),
            "callback": {"type": "object"},
            "hook_errors": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Health": {
        "type": "object",
        "required": ["ok", "redis"],
        "properties": {
            "ok": {"type": "boolean"},
            "redis": {
                "description": "true: answers; false: does not; full: refuses writes",
                "enum": [True, False, "full"],
            },
            "detail": {"type": "string"},
        },
    },
    "Status": {
        "type": "string",
        "enum": ["pending", "running", "paused", "stopped", "completed", "failed"],
    },
    "ControlResult": {
        "type": "object",
        "required": ["run_id", "status"],
        "properties": {
            "run_id": {"type": "string"},
            "status": _ref("Status"),
            "requeued": {"type": "integer", "description": "retry: vertices enqueued again"},
        },
    },
}


def build() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway."""
    html = {"text/html": {"schema": {"type": "string"}}}
    paths: dict[str, Any] = {
        "/": {
            "get": _op(
                "The dashboard",
                {"200": {"description": "The dashboard page", "content": html}},
                security=_OPEN,
                op_id="dashboard",
            )
        },
        "/static/{name}": {
            "get": _op(
                "The dashboard's script, style and icon",
                {
                    "200": {
                        "description": "The file",
                        "content": {
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                            "image/svg+xml": {"schema": {"type": "string"}},
                        },
                    },
                    "404": _error("Not one of the served files", "not_found"),
                },
                security=_OPEN,
                parameters=[
                    _path(
                        "name", "File name", enum=["dashboard.js", "dashboard.css", "favicon.svg"]
                    )
                ],
                op_id="staticFile",
            )
        },
        "/favicon.ico": {
            "get": _op(
                "The icon (SVG)",
                {
                    "200": {
                        "description": "The icon",
                        "content": {"image/svg+xml": {"schema": {"type": "string"}}},
                    }
                },
                security=_OPEN,
                op_id="favicon",
            )
        },
        "/healthz": {
            "get": _op(
                "Whether the gateway reaches Redis",
                {
                    "200": _json("Redis answers", _ref("Health")),
                    "503": _json(
                        'Redis does not answer ("redis": false) or is full ("redis": "full")',
                        _ref("Health"),
                    ),
                },
                security=_OPEN,
                op_id="healthz",
            )
        },
        "/openapi.json": {
            "get": _op(
                "This document",
                {"200": _json("OpenAPI 3.1", {"type": "object"})},
                security=_READ,
                op_id="openapi",
            )
        },
        "/flows": {
            "get": _op(
                "The registered flows",
                {
                    "200": _json(
                        "Flows",
                        {
                            "type": "object",
                            "properties": {"flows": {"type": "array", "items": {"type": "object"}}},
                        },
                    )
                },
                security=_READ,
                op_id="listFlows",
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics of the streams",
                {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                security=_READ,
                op_id="metrics",
            )
        },
        "/dead-letters": {
            "get": _op(
                "Dead-lettered messages",
                {
                    "200": _json(
                        "Dead letters, newest first",
                        {
                            "type": "object",
                            "properties": {
                                "dead_letters": {"type": "array", "items": {"type": "object"}}
                            },
                        },
                    ),
                    "400": _error("limit is not an integer from 1 to 1000", "invalid_limit"),
                },
                security=_READ,
                parameters=[
                    _query(
                        "limit",
                        "At most this many per partition (default 100)",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                    )
                ],
                op_id="deadLetters",
            )
        },
        "/dead-letters/{id}/replay": {
            "post": _op(
                "Start the dead letter's vertex again",
                {
                    "200": _json("Replayed", _ref("RunStarted")),
                    "400": _error("Malformed id", "invalid_id"),
                    "404": _error("No such dead letter or run", "run_not_found", "unknown_flow"),
                    "409": _error("The run cannot be resumed", "invalid_transition"),
                },
                security=_ADMIN,
                parameters=[_path("id", "Dead letter id (flow.partition.entry)", maxLength=200)],
                op_id="replayDeadLetter",
            )
        },
        "/flow/{name}": {
            "get": _op(
                "A flow's definition and its schedules (paused, last and next tick)",
                {
                    "200": _json("The definition", {"type": "object"}),
                    "400": _BAD_ID,
                    "404": _UNKNOWN,
                },
                security=_READ,
                parameters=[_FLOW],
                op_id="flowDefinition",
            ),
            "post": _op(
                "Start a run of the flow on the request body",
                {
                    "200": {
                        "description": "(?wait=) the run completed: its result",
                        "headers": {"X-Run-Id": {"schema": {"type": "string"}}},
                        "content": {
                            "application/json": {"schema": {}},
                            "application/octet-stream": {"schema": {"type": "string"}},
                        },
                    },
                    "202": _json(
                        "Started (or still running when the wait ended)",
                        _ref("RunStarted"),
                        **{"X-Run-Id": {"schema": {"type": "string"}}},
                    ),
                    "400": _error(
                        "Malformed or empty JSON body, bad wait, run id, priority or callback URL",
                        "invalid_json",
                        "empty_body",
                        "invalid_wait",
                        "invalid_id",
                        "invalid_priority",
                        "invalid_callback_url",
                    ),
                    "404": _error("Unknown flow", "unknown_flow"),
                    "409": _error("(?wait=) the run was stopped", "run_stopped"),
                    "413": _error(
                        "Body larger than max_body or max_value",
                        "request_entity_too_large",
                        "value_too_large",
                    ),
                    "500": _json("(?wait=) the run failed", _ref("RunFailed")),
                },
                security=_RUN,
                parameters=[
                    _FLOW,
                    _query(
                        "wait",
                        "Seconds to wait for the result: finite, >= 0; above 300 waits 300",
                        {"type": "number", "minimum": 0},
                    ),
                    {
                        "name": "X-Run-Id",
                        "in": "header",
                        "required": False,
                        "description": "Caller-chosen run key: the same key is the same run",
                        "schema": {"type": "string", "pattern": RUN_KEY},
                    },
                    {
                        "name": "X-Callback-Url",
                        "in": "header",
                        "required": False,
                        "description": "http(s) URL the outcome is POSTed to (public hosts only)",
                        "schema": {"type": "string", "format": "uri"},
                    },
                ],
                body={
                    "required": False,
                    "description": "The run's input: JSON parsed (an empty JSON body is "
                    "400 empty_body: send null for no input), anything else as bytes. "
                    "Other query parameters become ctx.options.",
                    "content": {
                        "application/json": {"schema": {}},
                        "application/octet-stream": {"schema": {"type": "string"}},
                    },
                },
                op_id="startRun",
            ),
        },
        "/flow/{name}/batch": {
            "post": _op(
                "Start one run per input (at most max_batch); nothing starts if an item is bad",
                {
                    "202": _json(
                        "Started (a caller-chosen id that exists answers that run)",
                        {
                            "type": "object",
                            "required": ["run_ids"],
                            "properties": {
                                "run_ids": {"type": "array", "items": {"type": "string"}}
                            },
                        },
                    ),
                    "400": _error(
                        "Malformed or empty body, bad flow name, or an invalid item: nothing "
                        "was submitted",
                        "invalid_json",
                        "empty_body",
                        "invalid_id",
                        "invalid_batch",
                    ),
                    "404": _error("Unknown flow", "unknown_flow"),
                    "413": _error(
                        "More items than max_batch, or a body larger than max_body",
                        "batch_too_large",
                        "request_entity_too_large",
                    ),
                    "415": _error("The body is not application/json", "unsupported_media_type"),
                    "503": _error(
                        "Redis unavailable or full; batch_incomplete lists the ids submitted "
                        "and unknown",
                        "redis_unavailable",
                        "redis_full",
                        "batch_incomplete",
                    ),
                },
                security=_RUN,
                parameters=[_FLOW],
                body={
                    "required": True,
                    "description": "A JSON array of inputs, or {inputs, run_ids} with a "
                    "caller-chosen id or null per input. Query parameters become ctx.options.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"type": "array"},
                                    {
                                        "type": "object",
                                        "required": ["inputs"],
                                        "properties": {
                                            "inputs": {"type": "array"},
                                            "run_ids": {
                                                "type": "array",
                                                "items": {
                                                    "type": ["string", "null"],
                                                    "pattern": RUN_KEY,
                                                },
                                            },
                                        },
                                    },
                                ]
                            }
                        }
                    },
                },
                op_id="startBatch",
            ),
        },
        "/flow/{name}/runs": {
            "get": _op(
                "The flow's runs, newest first",
                {
                    "200": _json(
                        "A page of runs",
                        {
                            "type": "object",
                            "properties": {
                                "runs": {"type": "array", "items": {"type": "object"}},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                        },
                    ),
                    "400": _error(
                        "Bad status, limit or cursor",
                        "invalid_status",
                        "invalid_limit",
                        "invalid_cursor",
                        "invalid_id",
                    ),
                    "404": _error("Unknown flow", "unknown_flow"),
                },
                security=_READ,
                parameters=[
                    _FLOW,
                    _query("status", "Only runs in this status (absent: all)", _ref("Status")),
                    _query(
                        "limit",
                        "Page size (default 20)",
                        {"type": "integer", "minimum": 1, "maximum": 500},
                    ),
                    _query("cursor", "next_cursor of the previous page", {"type": "string"}),
                ],
                op_id="listRuns",
            )
        },
        "/flow/{name}/run/{run_id}": {
            "get": _op(
                "A run's state",
                {"200": _json("The state", _ref("RunState")), "400": _BAD_ID, "404": _UNKNOWN},
                security=_READ,
                parameters=[_FLOW, _RUN_ID],
                op_id="runState",
            )
        },
        "/flow/{name}/run/{run_id}/{action}": {
            "post": _op(
                "Pause, resume, stop or retry a run",
                {
                    "200": _json("The run's new status", _ref("ControlResult")),
                    "400": _BAD_ID,
                    "404": _error(
                        "Unknown flow, run or action", "unknown_flow", "run_not_found", "not_found"
                    ),
                    "409": _error("Not allowed in the run's status", "invalid_transition"),
                },
                security=_ADMIN,
                parameters=[
                    _FLOW,
                    _RUN_ID,
                    _path("action", "What to do", enum=["pause", "resume", "stop", "retry"]),
                ],
                op_id="controlRun",
            )
        },
        "/flow/{name}/schedule/{schedule}/{action}": {
            "post": _op(
                "Pause or resume one of the flow's schedules, in every process",
                {
                    "200": _json("The schedule and its state", {"type": "object"}),
                    "400": _BAD_ID,
                    "404": _error(
                        "Unknown flow, schedule or action",
                        "unknown_flow",
                        "unknown_schedule",
                        "not_found",
                    ),
                },
                security=_ADMIN,
                parameters=[
                    _FLOW,
                    _path("schedule", "Schedule name", maxLength=64),
                    _path("action", "What to do", enum=["pause", "resume"]),
                ],
                op_id="controlSchedule",
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aioflow gateway",
            "version": "0.1.0",
            "description": "Start workflow runs, read their state, steer them. Errors are "
            'JSON {"error": code, "detail": text}.',
        },
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "api_tokens: read < run < admin",
                },
                "signature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Aioflow-Signature",
                    "description": 't=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>; '
                    "each signature is accepted once",
                },
            },
        },
    }


@functools.cache
def document_bytes() -> bytes:
    return codec.dumps(build())
