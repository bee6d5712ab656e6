"""The JSON Schemas of typed flows as OpenAPI components: a flow's input and result
schemas (``aioflow.definitions.types.schemas``) are placed under
``components/schemas`` as ``<flow>.input`` and ``<flow>.result``, the ``$defs`` of
their nested models hoisted beside them as ``<flow>.<Model>`` and every
``#/$defs/<Model>`` reference rewritten to point there, so the document's
references resolve. :mod:`aioflow.gateway.openapi` uses them as the request body
and the ``?wait=`` result of each typed flow's own ``POST /flow/<name>``."""

from __future__ import annotations

import dataclasses
from typing import Any

from aioflow.definitions.model import Flow
from aioflow.definitions.types import schemas

from .schemas import ref

DEFS = "#/$defs/"


BINARY = {"type": "string", "format": "binary"}  # a bytes annotation's schema


@dataclasses.dataclass(frozen=True)
class FlowSchemas:
    """One flow's input and result as OpenAPI content (media type -> schema, the
    schemas ``$ref``s into ``components``), or None where the flow says nothing."""

    flow: str
    body: dict[str, Any] | None
    result: dict[str, Any] | None


def _content(components: dict[str, Any], flow: str, kind: str, schema: dict[str, Any]) -> Any:
    if schema == BINARY:  # bytes travel raw (a JSON string converts too, on input)
        raw = {"application/octet-stream": {"schema": {"type": "string"}}}
        return (
            {**raw, "application/json": {"schema": {"type": "string"}}} if kind == "input" else raw
        )
    return {"application/json": {"schema": place(components, flow, kind, schema)}}


def _free(components: dict[str, Any], *names: str) -> str:
    for name in names:
        if name not in components:
            return name
    n = 2
    while f"{names[-1]}.{n}" in components:
        n += 1
    return f"{names[-1]}.{n}"


def _rewrite(node: Any, names: dict[str, str]) -> Any:
    """``node`` with its ``$defs`` dropped and its ``#/$defs/X`` references renamed."""
    if isinstance(node, list):
        return [_rewrite(v, names) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k == "$defs":
            continue
        if k == "$ref" and isinstance(v, str) and v.startswith(DEFS):
            out[k] = ref(names[v[len(DEFS) :]])["$ref"]
        elif k == "mapping" and isinstance(v, dict):  # a discriminator's targets
            out[k] = {
                tag: ref(names[t[len(DEFS) :]])["$ref"]
                if isinstance(t, str) and t.startswith(DEFS)
                else t
                for tag, t in v.items()
            }
        else:
            out[k] = _rewrite(v, names)
    return out


def place(
    components: dict[str, Any], flow: str, kind: str, schema: dict[str, Any]
) -> dict[str, Any]:
    """Put ``schema`` (the flow's ``kind``: input or result) and its ``$defs`` into
    ``components``; answers a ``$ref`` to it. Pydantic gathers every nested model in
    the root's ``$defs``; a name taken already (the input's and the result's models
    may share one) gets the kind in it."""
    defs: dict[str, Any] = schema.get("$defs") or {}
    names: dict[str, str] = {}
    for d in defs:
        key = names[d] = _free(components, f"{flow}.{d}", f"{flow}.{kind}.{d}")
        components[key] = {}  # reserved (filled below, once every name is known)
    for d, key in names.items():
        components[key] = _rewrite(defs[d], names)
    root = _free(components, f"{flow}.{kind}")
    components[root] = _rewrite(schema, names)
    return ref(root)


def flow_schemas(flows: tuple[Flow, ...], components: dict[str, Any]) -> list[FlowSchemas]:
    """The typed flows among ``flows`` (an input or a result schema), their schemas
    placed into ``components``."""
    out = []
    for flow in flows:
        found = schemas(flow)
        if found["input"] is None and found["result"] is None:
            continue
        body = result = None
        if found["input"] is not None:
            body = _content(components, flow.name, "input", found["input"])
        if found["result"] is not None:
            result = _content(components, flow.name, "result", found["result"])
        out.append(FlowSchemas(flow.name, body, result))
    return out
