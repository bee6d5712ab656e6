"""The client over HTTP: the same methods as the Redis client, through a gateway.

For services that must not hold Redis credentials. :class:`aioflow.Client` delegates
here when its URL is ``http(s)://``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import aiohttp

from aioflow.core import codec
from aioflow.core.errors import (
    AioflowError,
    ConfigError,
    Forbidden,
    GatewayError,
    GatewayUnavailable,
    InvalidBatch,
    InvalidCallbackUrl,
    InvalidCursor,
    InvalidInput,
    InvalidRunId,
    InvalidTransition,
    LimitExceeded,
    RedisFull,
    ResultTimeout,
    RunFailed,
    RunNotFound,
    RunStopped,
    Unauthorized,
    UnknownFlow,
)
from aioflow.definitions.status import RunState, Status, VertexState
from aioflow.store.keys import RunId, check_event_name, check_flow_name, parse_run_ref

# the gateway answers ?wait= for at most this long; longer waits poll the state
MAX_WAIT = 300.0
_POLL_MIN, _POLL_MAX = 0.02, 1.0

_ERRORS: dict[str, type[AioflowError]] = {
    "unknown_flow": UnknownFlow,
    "run_not_found": RunNotFound,
    "invalid_id": InvalidRunId,
    "invalid_callback_url": InvalidCallbackUrl,
    "invalid_cursor": InvalidCursor,
    "invalid_transition": InvalidTransition,
    "forbidden": Forbidden,
    "value_too_large": LimitExceeded,
    "invalid_batch": InvalidBatch,
}
_VERTEX_FIELDS = {f.name for f in dataclasses.fields(VertexState)}


def _state(doc: dict[str, Any]) -> RunState:
    vertices = {
        a: VertexState(**{k: v for k, v in vd.items() if k in _VERTEX_FIELDS})
        for a, vd in (doc.get("vertices") or {}).items()
    }
    return RunState(
        run_id=doc["run_id"],
        flow=doc.get("flow") or RunId.parse(doc["run_id"]).flow,
        status=Status(doc["status"]),
        created=doc.get("created"),
        started=doc.get("started"),
        ended=doc.get("ended"),
        vertices=vertices,
        result=doc.get("result"),
        error=doc.get("error"),
        callback=doc.get("callback"),
        hook_errors=doc.get("hook_errors"),
    )


def _outcome(state: RunState) -> Any:
    if state.status is Status.COMPLETED:
        return state.result
    if state.status is Status.STOPPED:
        raise RunStopped(state.run_id)
    raise RunFailed.from_error(state.run_id, state.error or {})


class HttpClient:
    """Runs flows through a gateway at ``url``; ``token`` is sent as a bearer token.

    Raises what the Redis client raises (UnknownFlow, RunFailed, RunStopped,
    ResultTimeout, RunNotFound, InvalidTransition...), :class:`GatewayUnavailable`
    when the gateway or its Redis cannot be reached, and :class:`GatewayError`
    for other refusals (401/403 among them). A failed run's traceback is only
    there when the gateway exposes tracebacks.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"not a gateway URL: {url!r} (expected http(s)://host:port)")
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        body: tuple[Any] | None = None,
        headers: dict[str, str] | None = None,
        wait: float = 0.0,
        allow: tuple[int, ...] = (),
    ) -> tuple[int, str, bytes]:
        """One request; answers (status, content type, body). An error status not in
        ``allow`` raises. ``body`` is ``(value,)``: bytes go raw, anything else as JSON."""
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers)
        hdrs = dict(headers or {})
        data: bytes | None = None
        if body is not None:
            if isinstance(body[0], bytes):
                data, hdrs["Content-Type"] = body[0], "application/octet-stream"
            else:
                data, hdrs["Content-Type"] = codec.dumps_finite(body[0], "body"), "application/json"
        try:
            async with self._session.request(
                method,
                self.url + path,
                params=params,
                data=data,
                headers=hdrs,
                timeout=aiohttp.ClientTimeout(total=self._timeout + wait),
            ) as resp:
                raw = await resp.read()
                ctype = resp.content_type
                status = resp.status
        except (TimeoutError, aiohttp.ClientConnectionError) as e:
            raise GatewayUnavailable(f"gateway {self.url} is unavailable: {e!r}") from e
        if status >= 400 and status not in allow:
            self._raise(status, ctype, raw)
        return status, ctype, raw

    def _raise(self, status: int, ctype: str, raw: bytes) -> NoReturn:
        doc: dict[str, Any] = {}
        if ctype == "application/json":
            try:
                doc = codec.loads(raw)
            except ValueError:
                doc = {}
        code = str(doc.get("error", f"http_{status}"))
        detail = str(doc.get("detail", raw[:200].decode("utf-8", "replace")))
        if code == "redis_full":  # a RedisUnavailable too, as GatewayUnavailable
            raise RedisFull(detail)
        if status in (502, 503, 504):
            raise GatewayUnavailable(f"gateway {self.url} answered {status}: {detail}")
        if code == "unauthorized":
            raise Unauthorized(str(doc.get("reason", "missing")), detail)
        if code == "invalid_input":  # 422: its detail is the list of validation errors
            errors: list[dict[str, Any]] = (
                doc["detail"] if isinstance(doc.get("detail"), list) else []
            )
            raise InvalidInput(f"invalid input: {len(errors)} error(s)", errors)
        if code == "invalid_batch" and isinstance(doc.get("index"), int):
            raise InvalidBatch(detail, index=doc["index"], errors=doc.get("errors") or [])
        cls = _ERRORS.get(code)
        if cls is not None:
            raise cls(detail)
        raise GatewayError(status, code, detail)

    def _start_args(
        self,
        flow: str,
        options: dict[str, list[str]] | None,
        run_id: str | None,
        callback_url: str | None,
        wait: float | None,
        priority: str | None = None,
    ) -> tuple[str, list[tuple[str, str]], dict[str, str]]:
        params = [(k, v) for k, vs in (options or {}).items() for v in vs if k != "wait"]
        if wait is not None:
            params.append(("wait", f"{wait:g}"))
        headers = {}
        if run_id is not None:
            headers["X-Run-Id"] = run_id
        if callback_url is not None:
            headers["X-Callback-Url"] = callback_url
        if priority is not None:
            headers["X-Priority"] = priority
        return f"/flow/{check_flow_name(flow)}", params, headers

    async def submit(
        self,
        flow: str,
        data: Any = None,
        *,
        run_id: str | None = None,
        options: dict[str, list[str]] | None = None,
        delay: float | None = None,
        callback_url: str | None = None,
        priority: str | None = None,
    ) -> str:
        if delay is not None:
            raise ConfigError("delay= needs a Redis client: the gateway has no delayed start")
        path, params, headers = self._start_args(
            flow, options, run_id, callback_url, None, priority
        )
        _, _, raw = await self._call("POST", path, params=params, body=(data,), headers=headers)
        return str(codec.loads(raw)["run_id"])

    async def submit_many(
        self,
        flow: str,
        inputs: Iterable[Any],
        *,
        options: dict[str, list[str]] | None = None,
        run_ids: Sequence[str | None] | None = None,
    ) -> list[str]:
        path, params, _ = self._start_args(flow, options, None, None, None)
        doc: dict[str, Any] = {"inputs": list(inputs)}
        if run_ids is not None:
            doc["run_ids"] = list(run_ids)
        _, _, raw = await self._call("POST", path + "/batch", params=params, body=(doc,))
        return [str(r) for r in codec.loads(raw)["run_ids"]]

    async def execute(
        self,
        flow: str,
        data: Any = None,
        *,
        timeout: float | None = None,
        run_id: str | None = None,
        options: dict[str, list[str]] | None = None,
        callback_url: str | None = None,
        priority: str | None = None,
    ) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = MAX_WAIT if timeout is None else min(max(timeout, 0.0), MAX_WAIT)
        path, params, headers = self._start_args(
            flow, options, run_id, callback_url, wait, priority
        )
        status, ctype, raw = await self._call(
            "POST", path, params=params, body=(data,), headers=headers, wait=wait, allow=(409, 500)
        )
        if status == 200:
            return raw if ctype == "application/octet-stream" else codec.loads(raw)
        doc = codec.loads(raw) if ctype == "application/json" else {}
        if status == 500 and doc.get("error") == "run_failed":
            raise RunFailed.from_error(doc["run_id"], doc)
        if status == 409 and doc.get("error") == "run_stopped":
            raise RunStopped(doc["run_id"])
        if status >= 400:
            self._raise(status, ctype, raw)
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise ResultTimeout(f"run {doc['run_id']} did not finish in time")
        return await self.result(doc["run_id"], left)

    async def result(
        self, run_id: str, timeout: float | None = None, *, flow: str | None = None
    ) -> Any:
        # polling the state cannot miss a completion: a finished run stays finished
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = _POLL_MIN
        while True:
            st = await self.state(run_id, flow=flow)
            if st.status.finished:
                return _outcome(st)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise ResultTimeout(f"run {run_id} did not finish in time")
            await asyncio.sleep(pause if deadline is None else min(pause, deadline - now))
            pause = min(pause * 1.5, _POLL_MAX)

    def _run_path(self, run_id: str, flow: str | None) -> str:
        # a caller-chosen id goes as it is: the gateway finds its partition
        ref = parse_run_ref(run_id, flow)
        if isinstance(ref, RunId):
            return f"/flow/{ref.flow}/run/{ref}"
        return f"/flow/{flow}/run/{ref}"

    async def state(self, run_id: str, *, flow: str | None = None) -> RunState:
        _, _, raw = await self._call("GET", self._run_path(run_id, flow))
        return _state(codec.loads(raw))

    async def control(self, run_id: str, action: str, *, flow: str | None = None) -> Status:
        _, _, raw = await self._call("POST", f"{self._run_path(run_id, flow)}/{action}")
        return Status(codec.loads(raw)["status"])

    async def retry(self, run_id: str, *, flow: str | None = None) -> int:
        _, _, raw = await self._call("POST", f"{self._run_path(run_id, flow)}/retry")
        return int(codec.loads(raw).get("requeued", 0))

    async def send_event(
        self, name: str, data: Any, *, key: str | None, event_id: str | None
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {"key": key, "data": data}
        if event_id is not None:
            doc["id"] = event_id
        path = f"/events/{urllib.parse.quote(check_event_name(name), safe='')}"
        _, _, raw = await self._call("POST", path, body=(doc,))
        return dict(codec.loads(raw))

    async def signal(self, run_id: str, vertex: str, data: Any, *, flow: str | None) -> bool:
        path = f"{self._run_path(run_id, flow)}/signal/{urllib.parse.quote(vertex, safe='')}"
        _, _, raw = await self._call("POST", path, body=(data,))
        return bool(codec.loads(raw)["taken"])

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        _, _, raw = await self._call("GET", "/dead-letters", params=[("limit", str(limit))])
        out: list[dict[str, Any]] = codec.loads(raw)["dead_letters"]
        return out

    async def replay(self, dead_letter_id: str) -> str:
        path = f"/dead-letters/{urllib.parse.quote(dead_letter_id, safe='')}/replay"
        _, _, raw = await self._call("POST", path)
        return str(codec.loads(raw)["run_id"])

    async def runs(
        self,
        flow: str,
        *,
        status: Status | str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> tuple[list[RunState], str | None]:
        params = [("limit", str(limit))]
        if status:
            params.append(("status", Status(status).value))
        if cursor:
            params.append(("cursor", cursor))
        path = f"/flow/{check_flow_name(flow)}/runs"
        _, _, raw = await self._call("GET", path, params=params)
        doc = codec.loads(raw)
        runs = [_state({**r, "flow": flow}) for r in doc["runs"]]
        return runs, doc.get("next_cursor")
