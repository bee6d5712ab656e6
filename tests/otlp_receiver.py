"""A minimal OTLP/HTTP trace receiver on loopback: decodes what exporters POST."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass
class Span:
    service: str
    resource: dict[str, Any]
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    error: bool
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class Receiver:
    """``await start(port)``; every span received lands in :attr:`spans`."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self._runner: web.AppRunner | None = None

    async def _traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf", request.content_type
        req = ExportTraceServiceRequest()
        req.ParseFromString(await request.read())
        self.requests += 1
        for rs in req.resource_spans:
            res = _attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    self.spans.append(
                        Span(
                            service=str(res.get("service.name")),
                            resource=res,
                            name=sp.name,
                            trace_id=sp.trace_id.hex(),
                            span_id=sp.span_id.hex(),
                            parent_id=sp.parent_span_id.hex(),
                            attributes=_attrs(sp.attributes),
                            error=sp.status.code == sp.status.STATUS_CODE_ERROR,
                            events=[(e.name, _attrs(e.attributes)) for e in sp.events],
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
