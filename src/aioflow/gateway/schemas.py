"""The pieces the gateway's OpenAPI document is assembled from: the patterns of
flow names and run ids, the security requirements, builders of parameters and
responses, the parameters and responses several routes share, and the component
schemas and security schemes. :mod:`aioflow.gateway.openapi` puts them together."""

from __future__ import annotations

from typing import Any

NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
RUN_KEY = r"^[A-Za-z0-9_-]{1,64}$"
# a full run id <flow>.<partition>.<key>, or the key alone (the id its caller chose)
RUN_REF = r"^([a-z0-9][a-z0-9_-]{0,63}\.[0-9]{1,4}\.)?[A-Za-z0-9_-]{1,64}$"
EVENT_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
EVENT_KEY = r"^[^\u0000-\u001f\u007f]{0,256}$"
EVENT_ID = r"^[A-Za-z0-9_-]{1,60}$"

Security = list[dict[str, list[str]]]
READ: Security = [{"bearer": []}]
RUN: Security = [{"bearer": []}, {"signature": []}]
ADMIN: Security = [{"bearer": []}, {"signature": []}]
OPEN: Security = []


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def error(description: str, *codes: str) -> dict[str, Any]:
    """A JSON error response whose ``error`` is one of ``codes``."""
    schema: dict[str, Any] = {
        "allOf": [ref("Error"), {"properties": {"error": {"enum": list(codes)}}}]
    }
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def json_response(description: str, schema: dict[str, Any], **headers: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        out["headers"] = headers
    return out


def text_response(description: str, *media_types: str) -> dict[str, Any]:
    """A response whose body is a string in any of ``media_types``."""
    content = {media: {"schema": {"type": "string"}} for media in media_types}
    return {"description": description, "content": content}


def array_of(field: str, items: dict[str, Any]) -> dict[str, Any]:
    """An object holding the array ``field``."""
    return {"type": "object", "properties": {field: {"type": "array", "items": items}}}


def path_param(name: str, description: str, pattern: str | None = None, **schema: Any) -> Any:
    s: dict[str, Any] = {"type": "string", **schema}
    if pattern:
        s["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "description": description, "schema": s}


def query_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def header_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": schema,
    }


FLOW = path_param("name", "Flow name", NAME, maxLength=64)
RUN_ID = path_param(
    "run_id",
    "The run id POST /flow/{name} answered, or the X-Run-Id its caller chose",
    RUN_REF,
    maxLength=134,
)
BAD_ID = error("Malformed flow name or run id", "invalid_id")
UNKNOWN = error("No such flow or run", "unknown_flow", "run_not_found")
UNKNOWN_FLOW = error("Unknown flow", "unknown_flow")
# a run's input, or its result: JSON, or anything else as bytes
ANY_BODY = {
    "application/json": {"schema": {}},
    "application/octet-stream": {"schema": {"type": "string"}},
}

# added to every operation: the answers of the auth checks (unless open) and of Redis
UNAUTHORIZED = error(
    "No valid credentials (``reason``: missing, malformed, stale, bad, replayed)",
    "unauthorized",
)
FORBIDDEN = error("The bearer token's scope is too weak", "forbidden")
UNAVAILABLE = error(
    "Redis is unavailable, or full (at maxmemory it refuses writes)",
    "redis_unavailable",
    "redis_full",
)

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "description": "Machine-readable code"},
            "detail": {"type": "string"},
            "reason": {"type": "string", "description": "Why a request was refused (401)"},
        },
    },
    "ValidationErrors": {
        "type": "array",
        "description": "Why the input does not match the flow's input type (pydantic's errors)",
        "items": {
            "type": "object",
            "properties": {
                "type": {"type": "string", "description": "Machine-readable error type"},
                "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                "msg": {"type": "string"},
                "input": {"description": "The offending value"},
            },
        },
    },
    "InvalidInput": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"const": "invalid_input"}, "detail": ref("ValidationErrors")},
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
            ref("Error"),
            ref("RunError"),
            {"properties": {"error": {"const": "run_failed"}, "run_id": {"type": "string"}}},
        ]
    },
    "RunState": {
        "type": "object",
        "required": ["run_id", "flow", "status", "vertices"],
        "properties": {
            "run_id": {"type": "string"},
            "flow": {"type": "string"},
            "status": ref("Status"),
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
            "error": ref("RunError"),
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
    "EventSent": {
        "type": "object",
        "required": ["resolved", "started"],
        "properties": {
            "resolved": {"type": "integer", "description": "waiting vertices resolved"},
            "started": {"type": "array", "items": {"type": "string"}, "description": "run ids"},
        },
    },
    "SignalResult": {
        "type": "object",
        "required": ["run_id", "vertex", "taken"],
        "properties": {
            "run_id": {"type": "string"},
            "vertex": {"type": "string"},
            "taken": {
                "type": "boolean",
                "description": "false: the run ended or the vertex was resolved already",
            },
        },
    },
    "ControlResult": {
        "type": "object",
        "required": ["run_id", "status"],
        "properties": {
            "run_id": {"type": "string"},
            "status": ref("Status"),
            "requeued": {"type": "integer", "description": "retry: vertices enqueued again"},
        },
    },
}

SECURITY_SCHEMES: dict[str, Any] = {
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
}
