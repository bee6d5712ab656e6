"""The gateway's HTTP API as an OpenAPI 3.1 document, built here in code and
served at ``GET /openapi.json``: one :class:`Route` per operation in
:data:`ROUTES`, assembled by :func:`build` from the pieces in
:mod:`aioflow.gateway.schemas`, plus one ``POST /flow/<name>`` per typed flow the
gateway serves, whose body and result are the flow's own schemas
(:mod:`aioflow.gateway.flowdocs`). tests/gateway/test_openapi.py fails when a route
of the gateway is missing here or this describes a route the gateway lacks."""

from __future__ import annotations

import dataclasses
from typing import Any

from aioflow.core import codec
from aioflow.definitions.model import Flow

from .flowdocs import FlowSchemas, flow_schemas
from .schemas import (
    ADMIN,
    ANY_BODY,
    BAD_ID,
    EVENT_ID,
    EVENT_KEY,
    EVENT_NAME,
    FLOW,
    FORBIDDEN,
    NAME,
    OPEN,
    READ,
    RUN,
    RUN_ID,
    RUN_KEY,
    RUN_REF,
    SCHEMAS,
    SECURITY_SCHEMES,
    UNAUTHORIZED,
    UNAVAILABLE,
    UNKNOWN,
    UNKNOWN_FLOW,
    Security,
    array_of,
    error,
    header_param,
    json_response,
    path_param,
    query_param,
    ref,
    text_response,
)

__all__ = ["NAME", "ROUTES", "RUN_KEY", "RUN_REF", "Route", "build", "document_bytes"]


@dataclasses.dataclass(frozen=True)
class Route:
    """One operation of the gateway: ``method`` (lower case) on ``path``."""

    method: str
    path: str
    op_id: str
    summary: str
    security: Security
    # by status code; the auth checks' and Redis' answers are added by operation()
    responses: dict[str, Any]
    _: dataclasses.KW_ONLY
    parameters: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None

    def operation(self) -> dict[str, Any]:
        """The route's OpenAPI operation object."""
        responses = dict(self.responses)
        if self.security:
            responses["401"] = UNAUTHORIZED
            responses["403"] = FORBIDDEN
        responses.setdefault("503", UNAVAILABLE)
        op: dict[str, Any] = {
            "operationId": self.op_id,
            "summary": self.summary,
            "security": self.security,
            "responses": responses,
        }
        if self.parameters:
            op["parameters"] = list(self.parameters)
        if self.body:
            op["requestBody"] = self.body
        return op


_START_RUN_BODY = {
    "required": False,
    "description": "The run's input: JSON parsed (an empty JSON body is "
    "400 empty_body: send null for no input), anything else as bytes. "
    "Other query parameters become ctx.options.",
    "content": ANY_BODY,
}

_SIGNAL_BODY = {
    "required": False,
    "description": "The data: JSON parsed (an empty JSON body is 400 empty_body: send "
    "null for none), anything else as bytes",
    "content": ANY_BODY,
}

_START_BATCH_BODY = {
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
                                "items": {"type": ["string", "null"], "pattern": RUN_KEY},
                            },
                        },
                    },
                ]
            }
        }
    },
}

_EVENT_BODY = {
    "required": True,
    "description": 'The event: its key (absent or null: the key ""), its data, and '
    "its id (absent or null: a new one; an id sent before changes nothing)",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "key": {"type": ["string", "null"], "pattern": EVENT_KEY},
                    "data": {},
                    "id": {"type": ["string", "null"], "pattern": EVENT_ID},
                },
            }
        }
    },
}

_RUN_ID_HEADER = {"X-Run-Id": {"schema": {"type": "string"}}}

_START_RUN_RESPONSES = {
    "200": {
        "description": "(?wait=) the run completed: its result",
        "headers": _RUN_ID_HEADER,
        "content": ANY_BODY,
    },
    "202": json_response(
        "Started (or still running when the wait ended)", ref("RunStarted"), **_RUN_ID_HEADER
    ),
    "400": error(
        "Malformed or empty JSON body, bad wait, run id, priority or callback URL",
        "invalid_json",
        "empty_body",
        "invalid_wait",
        "invalid_id",
        "invalid_priority",
        "invalid_callback_url",
    ),
    "404": UNKNOWN_FLOW,
    "409": error("(?wait=) the run was stopped", "run_stopped"),
    "413": error(
        "Body larger than max_body or max_value",
        "request_entity_too_large",
        "value_too_large",
    ),
    "422": json_response(
        "The input does not match the type the flow's entry vertex declares: no run",
        ref("InvalidInput"),
    ),
    "500": json_response("(?wait=) the run failed", ref("RunFailed")),
}

_START_RUN_PARAMETERS = (
    query_param(
        "wait",
        "Seconds to wait for the result: finite, >= 0; above 300 waits 300",
        {"type": "number", "minimum": 0},
    ),
    header_param(
        "X-Run-Id",
        "Caller-chosen run key: the same key is the same run",
        {"type": "string", "pattern": RUN_KEY},
    ),
    header_param(
        "X-Callback-Url",
        "http(s) URL the outcome is POSTed to (public hosts only)",
        {"type": "string", "format": "uri"},
    ),
)

_START_BATCH_RESPONSES = {
    "202": json_response(
        "Started (a caller-chosen id that exists answers that run)",
        {
            "type": "object",
            "required": ["run_ids"],
            "properties": {"run_ids": {"type": "array", "items": {"type": "string"}}},
        },
    ),
    "400": json_response(
        "Malformed or empty body, bad flow name, or an invalid item: nothing was "
        "submitted (an item that does not match the flow's input type: its index and "
        "its validation errors)",
        {
            "allOf": [
                ref("Error"),
                {
                    "properties": {
                        "error": {
                            "enum": ["invalid_json", "empty_body", "invalid_id", "invalid_batch"]
                        },
                        "index": {"type": "integer", "minimum": 0},
                        "errors": ref("ValidationErrors"),
                    }
                },
            ]
        },
    ),
    "404": UNKNOWN_FLOW,
    "413": error(
        "More items than max_batch, or a body larger than max_body",
        "batch_too_large",
        "request_entity_too_large",
    ),
    "415": error("The body is not application/json", "unsupported_media_type"),
    "503": error(
        "Redis unavailable or full; batch_incomplete lists the ids submitted and unknown",
        "redis_unavailable",
        "redis_full",
        "batch_incomplete",
    ),
}

_RUNS_PAGE = {
    "type": "object",
    "properties": {
        "runs": {"type": "array", "items": {"type": "object"}},
        "next_cursor": {"type": ["string", "null"]},
    },
}

ROUTES: tuple[Route, ...] = (
    # the dashboard and its files, open to all
    Route(
        "get",
        "/",
        "dashboard",
        "The dashboard",
        OPEN,
        {"200": text_response("The dashboard page", "text/html")},
    ),
    Route(
        "get",
        "/static/{name}",
        "staticFile",
        "The dashboard's script, style and icon",
        OPEN,
        {
            "200": text_response("The file", "text/javascript", "text/css", "image/svg+xml"),
            "404": error("Not one of the served files", "not_found"),
        },
        parameters=(
            path_param(
                "name",
                "File name",
                enum=["dashboard.js", "schema.js", "dashboard.css", "favicon.svg"],
            ),
        ),
    ),
    Route(
        "get",
        "/favicon.ico",
        "favicon",
        "The icon (SVG)",
        OPEN,
        {"200": text_response("The icon", "image/svg+xml")},
    ),
    Route(
        "get",
        "/healthz",
        "healthz",
        "Whether the gateway reaches Redis",
        OPEN,
        {
            "200": json_response("Redis answers", ref("Health")),
            "503": json_response(
                'Redis does not answer ("redis": false) or is full ("redis": "full")',
                ref("Health"),
            ),
        },
    ),
    # what the gateway knows
    Route(
        "get",
        "/openapi.json",
        "openapi",
        "This document",
        READ,
        {"200": json_response("OpenAPI 3.1", {"type": "object"})},
    ),
    Route(
        "get",
        "/flows",
        "listFlows",
        "The registered flows",
        READ,
        {"200": json_response("Flows", array_of("flows", {"type": "object"}))},
    ),
    Route(
        "get",
        "/metrics",
        "metrics",
        "Prometheus metrics of the streams",
        READ,
        {"200": text_response("Prometheus text format", "text/plain")},
    ),
    # dead letters
    Route(
        "get",
        "/dead-letters",
        "deadLetters",
        "Dead-lettered messages",
        READ,
        {
            "200": json_response(
                "Dead letters, newest first", array_of("dead_letters", {"type": "object"})
            ),
            "400": error("limit is not an integer from 1 to 1000", "invalid_limit"),
        },
        parameters=(
            query_param(
                "limit",
                "At most this many per partition (default 100)",
                {"type": "integer", "minimum": 1, "maximum": 1000},
            ),
        ),
    ),
    Route(
        "post",
        "/dead-letters/{id}/replay",
        "replayDeadLetter",
        "Start the dead letter's vertex again",
        ADMIN,
        {
            "200": json_response("Replayed", ref("RunStarted")),
            "400": error("Malformed id", "invalid_id"),
            "404": error("No such dead letter or run", "run_not_found", "unknown_flow"),
            "409": error("The run cannot be resumed", "invalid_transition"),
        },
        parameters=(path_param("id", "Dead letter id (flow.partition.entry)", maxLength=200),),
    ),
    # flows and their runs
    Route(
        "get",
        "/flow/{name}",
        "flowDefinition",
        "A flow's definition and its schedules (paused, last and next tick)",
        READ,
        {"200": json_response("The definition", {"type": "object"}), "400": BAD_ID, "404": UNKNOWN},
        parameters=(FLOW,),
    ),
    Route(
        "post",
        "/flow/{name}",
        "startRun",
        "Start a run of the flow on the request body",
        RUN,
        _START_RUN_RESPONSES,
        parameters=(FLOW, *_START_RUN_PARAMETERS),
        body=_START_RUN_BODY,
    ),
    Route(
        "post",
        "/flow/{name}/batch",
        "startBatch",
        "Start one run per input (at most max_batch); nothing starts if an item is bad",
        RUN,
        _START_BATCH_RESPONSES,
        parameters=(FLOW,),
        body=_START_BATCH_BODY,
    ),
    Route(
        "get",
        "/flow/{name}/runs",
        "listRuns",
        "The flow's runs, newest first",
        READ,
        {
            "200": json_response("A page of runs", _RUNS_PAGE),
            "400": error(
                "Bad status, limit or cursor",
                "invalid_status",
                "invalid_limit",
                "invalid_cursor",
                "invalid_id",
            ),
            "404": UNKNOWN_FLOW,
        },
        parameters=(
            FLOW,
            query_param("status", "Only runs in this status (absent: all)", ref("Status")),
            query_param(
                "limit", "Page size (default 20)", {"type": "integer", "minimum": 1, "maximum": 500}
            ),
            query_param("cursor", "next_cursor of the previous page", {"type": "string"}),
        ),
    ),
    Route(
        "get",
        "/flow/{name}/run/{run_id}",
        "runState",
        "A run's state",
        READ,
        {"200": json_response("The state", ref("RunState")), "400": BAD_ID, "404": UNKNOWN},
        parameters=(FLOW, RUN_ID),
    ),
    # steering runs and schedules
    Route(
        "post",
        "/flow/{name}/run/{run_id}/{action}",
        "controlRun",
        "Pause, resume, stop or retry a run",
        ADMIN,
        {
            "200": json_response("The run's new status", ref("ControlResult")),
            "400": BAD_ID,
            "404": error(
                "Unknown flow, run or action", "unknown_flow", "run_not_found", "not_found"
            ),
            "409": error("Not allowed in the run's status", "invalid_transition"),
        },
        parameters=(
            FLOW,
            RUN_ID,
            path_param("action", "What to do", enum=["pause", "resume", "stop", "retry"]),
        ),
    ),
    Route(
        "post",
        "/flow/{name}/run/{run_id}/signal/{vertex}",
        "signalRun",
        "Resolve a waiting vertex of the run with the body (kept until the run reaches it)",
        RUN,
        {
            "200": json_response("Whether the signal was taken", ref("SignalResult")),
            "400": error(
                "Malformed flow name, run id or body", "invalid_id", "invalid_json", "empty_body"
            ),
            "404": UNKNOWN,
            "409": error("Not a wait vertex of the run", "invalid_transition"),
            "413": error(
                "Body larger than max_body or max_value",
                "request_entity_too_large",
                "value_too_large",
            ),
            "422": json_response(
                "The data does not match the wait's data_type: nothing sent", ref("InvalidInput")
            ),
        },
        parameters=(
            FLOW,
            RUN_ID,
            path_param("vertex", "The wait vertex's address", minLength=1, maxLength=1000),
        ),
        body=_SIGNAL_BODY,
    ),
    # events
    Route(
        "post",
        "/events/{name}",
        "sendEvent",
        "Send an event: resolve the runs waiting on (name, key), start the flows it starts",
        RUN,
        {
            "200": json_response("Applied (or sent before: the first answer)", ref("EventSent")),
            "400": error(
                "Malformed event name, key, id or body",
                "invalid_id",
                "invalid_json",
                "empty_body",
                "invalid_event",
            ),
            "413": error(
                "Body larger than max_body, data larger than max_value",
                "request_entity_too_large",
                "value_too_large",
            ),
            "415": error("The body is not application/json", "unsupported_media_type"),
            "422": json_response(
                "The data does not match the data_type of a wait on this event in a flow "
                "the gateway serves: nothing sent",
                ref("InvalidInput"),
            ),
        },
        parameters=(path_param("name", "Event name", EVENT_NAME, maxLength=64),),
        body=_EVENT_BODY,
    ),
    Route(
        "post",
        "/flow/{name}/schedule/{schedule}/{action}",
        "controlSchedule",
        "Pause or resume one of the flow's schedules, in every process",
        ADMIN,
        {
            "200": json_response("The schedule and its state", {"type": "object"}),
            "400": BAD_ID,
            "404": error(
                "Unknown flow, schedule or action", "unknown_flow", "unknown_schedule", "not_found"
            ),
        },
        parameters=(
            FLOW,
            path_param("schedule", "Schedule name", maxLength=64),
            path_param("action", "What to do", enum=["pause", "resume"]),
        ),
    ),
)


def typed_start(typed: FlowSchemas) -> Route:
    """The typed flow's own ``POST /flow/<name>``: its input schema as the body, its
    result schema as the ``?wait=`` answer (beside the generic ``/flow/{name}``)."""
    responses = dict(_START_RUN_RESPONSES)
    if typed.result is not None:
        responses["200"] = {
            "description": "(?wait=) the run completed: its result",
            "headers": _RUN_ID_HEADER,
            "content": typed.result,
        }
    body = _START_RUN_BODY
    if typed.body is not None:
        body = {
            "required": True,
            "description": f"The run's input, as the entry vertex of {typed.flow} declares it. "
            "Other query parameters become ctx.options.",
            "content": typed.body,
        }
    return Route(
        "post",
        f"/flow/{typed.flow}",
        f"start_{typed.flow}",
        f"Start a run of {typed.flow} (a typed flow) on the request body",
        RUN,
        responses,
        parameters=_START_RUN_PARAMETERS,
        body=body,
    )


def build(flows: tuple[Flow, ...] = ()) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a gateway serving ``flows``: every route, and a
    ``POST /flow/<name>`` of its own for each flow with an input or result type."""
    components = dict(SCHEMAS)
    typed = [typed_start(t) for t in flow_schemas(flows, components)]
    paths: dict[str, Any] = {}
    for route in (*ROUTES, *typed):
        paths.setdefault(route.path, {})[route.method] = route.operation()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aioflow gateway",
            "version": "0.1.0",
            "description": "Start workflow runs, read their state, steer them. Errors are "
            'JSON {"error": code, "detail": text}; a typed flow\'s invalid input is 422 '
            '{"error": "invalid_input", "detail": [errors]}.',
        },
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
    }


def document_bytes(flows: tuple[Flow, ...] = ()) -> bytes:
    """:func:`build` as JSON (the gateway builds it once, at startup)."""
    return codec.dumps(build(flows))
