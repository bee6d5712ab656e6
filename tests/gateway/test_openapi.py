"""GET /openapi.json describes exactly the gateway's routes, and schemathesis fuzzes
a live gateway (on a real Redis, a real worker) from it: no 5xx but the documented
``run_failed`` of a flow that fails on purpose, every answer as documented. A second
run generates input the document forbids (schemathesis' negative mode): every such
request is refused with a documented 4xx, never a 5xx."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import hypothesis
import requests
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import strategies as st
from redis.asyncio import Redis
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

import aioflow
from aioflow.gateway import openapi
from aioflow.gateway.routes import create_app
from tests.engine_helpers import running
from tests.gateway.test_gateway_security import make_flows


def routes(app: web.Application) -> set[tuple[str, str]]:
    return {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}


async def test_document_describes_every_route_and_no_other(redis: Redis) -> None:
    app = create_app(redis, flows=[])
    doc = openapi.build()
    assert routes(app) == documented(doc)
    assert doc["openapi"].startswith("3.1")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "503" in op["responses"], (method, path)
            assert op["security"] == [] or "401" in op["responses"], (method, path)


async def test_document_is_served(redis: Redis) -> None:
    async with TestClient(TestServer(create_app(redis, flows=[]))) as http:
        resp = await http.get("/openapi.json")
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.json() == openapi.build()


def _param(doc: dict[str, Any], path: str, method: str, name: str) -> dict[str, Any]:
    for p in doc["paths"][path][method]["parameters"]:
        if p["name"] == name:
            schema: dict[str, Any] = p["schema"]
            return doc["components"]["schemas"]["Status"] if "$ref" in schema else schema
    raise AssertionError(f"{method} {path} has no parameter {name}")


def test_document_states_what_input_is_allowed() -> None:
    doc = openapi.build()
    assert _param(doc, "/flow/{name}", "post", "wait") == {"type": "number", "minimum": 0}
    runs = _param(doc, "/flow/{name}/runs", "get", "limit")
    assert runs == {"type": "integer", "minimum": 1, "maximum": 500}
    dead = _param(doc, "/dead-letters", "get", "limit")
    assert dead == {"type": "integer", "minimum": 1, "maximum": 1000}
    status = _param(doc, "/flow/{name}/runs", "get", "status")
    assert status["enum"] == [s.value for s in aioflow.Status]
    run_id = _param(doc, "/flow/{name}/run/{run_id}", "get", "run_id")
    assert re.fullmatch(run_id["pattern"], "orders.3.order-42")
    assert re.fullmatch(run_id["pattern"], "order-42")
    assert not re.fullmatch(run_id["pattern"], "orders.x.order-42")
    bad = doc["paths"]["/flow/{name}"]["post"]["responses"]["400"]
    codes = bad["content"]["application/json"]["schema"]["allOf"][1]["properties"]["error"]
    assert {"empty_body", "invalid_wait", "invalid_json"} <= set(codes["enum"])


FLOWS = ["echo", "boom", "idle"]
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


def _tame_wait(case: schemathesis.Case[Any]) -> None:
    """A valid ``wait`` long enough for echo and boom to end, short for idle (it never
    ends); an invalid one stays as it is, to be refused."""
    if case.query and "wait" in case.query:
        try:
            wait = float(case.query["wait"])
        except (TypeError, ValueError):
            return
        if math.isfinite(wait) and wait >= 0:
            name = (case.path_parameters or {}).get("name")
            case.query["wait"] = min(wait, 0.1 if name == "idle" else 3.0)


def _real_flow(case: schemathesis.Case[Any], flow: str | None) -> None:
    """Aim a case with a valid flow name at one of the served flows (or leave it)."""
    name = (case.path_parameters or {}).get("name")
    if flow is None or not isinstance(name, str) or not case.operation.path.startswith("/flow/"):
        return
    if re.fullmatch(openapi.NAME, name):
        case.path_parameters = {**(case.path_parameters or {}), "name": flow}


def fuzz(base_url: str, examples: int) -> Counter[tuple[str, int]]:
    """Every operation, up to ``examples`` generated cases each; answers how often each
    (operation, status) was seen."""
    schema = schemathesis.openapi.from_dict(openapi.build())
    seen: Counter[tuple[str, int]] = Counter()
    session = requests.Session()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operation = result.ok()

        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy(), flow=st.sampled_from([*FLOWS, None]))
        def one(case: schemathesis.Case[Any], flow: str | None) -> None:
            if flow is not None and "name" in (case.path_parameters or {}):
                if case.operation.path.startswith("/flow/"):
                    case.path_parameters = {**(case.path_parameters or {}), "name": flow}
            if case.headers and "X-Callback-Url" in case.headers:
                # never let a generated URL send a worker anywhere: a loopback one is refused
                case.headers["X-Callback-Url"] = "http://127.0.0.1:9/cb"
            _tame_wait(case)
            resp = case.call(base_url=base_url, session=session, timeout=10)
            seen[case.operation.label, resp.status_code] += 1
            if resp.status_code >= 500:
                try:
                    doc = resp.json()
                except ValueError:
                    doc = {}
                assert resp.status_code == 500 and doc.get("error") == "run_failed", (
                    case.method,
                    case.formatted_path,
                    resp.status_code,
                    resp.text[:500],
                )
                assert case.path_parameters and case.path_parameters["name"] == "boom"
            case.validate_response(resp, checks=CHECKS)

        one()
    return seen


@contextlib.asynccontextmanager
async def live_gateway(url: str) -> AsyncIterator[str]:
    flows = make_flows()
    async with running(flows[:2], url) as stack:
        app = create_app(stack.redis, flows=flows, settings=aioflow.Settings(redis_url=url))
        async with TestServer(app, host="127.0.0.1") as server:
            yield str(server.make_url("")).rstrip("/")


async def test_fuzz_the_gateway_from_its_document(redis_url: str) -> None:
    async with live_gateway(redis_url) as base_url:
        seen = await asyncio.to_thread(fuzz, base_url, 15)
    assert sum(seen.values()) >= 100, seen
    # it reached real flows and runs, not only 404s
    assert {200, 400, 404} <= {status for _, status in seen}, seen
    assert seen["POST /flow/{name}", 202] + seen["POST /flow/{name}", 200], seen
    assert seen["GET /flow/{name}", 200], seen


# a refusal is any of these; 5xx never
REFUSED = ["400", "404", "405", "409", "413", "415", "422"]


def unguarded() -> dict[str, Any]:
    """The document without its security requirements: auth has tests of its own
    (test_gateway_security, test_hmac), and the gateway fuzzed here wants none, so
    missing credentials must not count as input it should refuse."""
    doc = openapi.build()
    for ops in doc["paths"].values():
        for op in ops.values():
            op["security"] = []
            for code in ("401", "403"):
                op["responses"].pop(code, None)
    del doc["components"]["securitySchemes"]
    return doc


def fuzz_negative(base_url: str, examples: int) -> Counter[tuple[str, int]]:
    """Up to ``examples`` cases per operation of input the document forbids; each must
    be refused with a 4xx the document lists (never a 5xx). Answers how often each
    (operation, status) was seen."""
    schema = schemathesis.openapi.from_dict(unguarded())
    schema.config.checks.negative_data_rejection.expected_statuses = REFUSED
    seen: Counter[tuple[str, int]] = Counter()
    session = requests.Session()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operation = result.ok()
        if not operation.path_parameters and not operation.query and not operation.body:
            continue  # nothing in it can be invalid (GET /, /healthz, /flows...)

        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(
            case=operation.as_strategy(GenerationMode.NEGATIVE),
            flow=st.sampled_from([*FLOWS, None]),
        )
        def one(case: schemathesis.Case[Any], flow: str | None) -> None:
            _real_flow(case, flow)
            if case.headers and "X-Callback-Url" in case.headers:
                case.headers["X-Callback-Url"] = "http://127.0.0.1:9/cb"
            _tame_wait(case)
            resp = case.call(base_url=base_url, session=session, timeout=10)
            seen[case.operation.label, resp.status_code] += 1
            assert resp.status_code < 500, (
                case.method,
                case.formatted_path,
                case.query,
                resp.status_code,
                resp.text[:500],
            )
            case.validate_response(resp, checks=[negative_data_rejection, *CHECKS])

        one()
    return seen


async def test_fuzz_the_gateway_with_invalid_input(redis_url: str) -> None:
    async with live_gateway(redis_url) as base_url:
        seen = await asyncio.to_thread(fuzz_negative, base_url, 12)
    refused = {status for _, status in seen}
    assert refused <= {int(s) for s in REFUSED} | {200, 202}, seen
    # the query parameters' own refusals were reached, not only bad paths
    assert seen["GET /flow/{name}/runs", 400], seen
    assert seen["POST /flow/{name}", 400], seen
    assert seen["GET /dead-letters", 400], seen
