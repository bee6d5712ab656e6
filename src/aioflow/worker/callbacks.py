"""What a worker does once a run has ended (its ``"f"`` message): the flow's
``on_failure`` (failed runs) and ``finally_`` hooks, then the callback: the run's
outcome POSTed, signed, to the URL it was started with. Both are recorded on the
run: the hooks' errors as ``hook_errors``, the delivery's report as ``cb``. Then
its family (:mod:`.calls`): a child run's outcome goes to its parent's ``call``
vertex, a parent that failed or was stopped stops its children."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from aioflow.core import codec
from aioflow.core.errors import InvalidCallbackUrl, RunFailed
from aioflow.core.security import (
    SIGNATURE_HEADER,
    CallbackPolicy,
    PublicResolver,
    parse_secrets,
    sign,
)
from aioflow.core.settings import Settings
from aioflow.definitions.model import Flow
from aioflow.definitions.status import Status
from aioflow.store.topology import Backend

from .calls import run_ended
from .context import Context

log = logging.getLogger("aioflow.worker")


class RunEnd:
    """Runs the hooks and the callback of ended runs, posting callbacks through one
    HTTP session of its own (opened at the first, closed by :meth:`aclose`)."""

    def __init__(self, settings: Settings, clock: Callable[[], float], backend: Backend) -> None:
        self._backend = backend
        self._settings = settings
        self._clock = clock
        self._secrets = parse_secrets(settings.hmac_secret)
        self._policy = CallbackPolicy.from_settings(
            settings.callback_allow_private, settings.callback_hosts
        )
        self._http: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def ops(self, flow: Flow, fetched: list[bytes | None], ctx: Context) -> list[Any]:
        """Run ``flow``'s hooks, then post the callback, for the run ``ctx`` is of;
        ``fetched`` starts with its status, error, result and callback URL. Answers
        the completion ops that record the hooks' errors and the callback's report."""
        raw_status, err, result, url = fetched[:4]
        status = Status((raw_status or b"failed").decode())
        ops: list[Any] = []
        hook_errors = await self._hooks(flow, status, err, ctx)
        if hook_errors:
            ops += ["S", "hook_errors", codec.dumps(hook_errors), ""]
        if url:
            doc: dict[str, Any] = {"run_id": ctx.run_id, "flow": flow.name, "status": status}
            if status is Status.COMPLETED:
                doc["result"] = codec.decode(result) if result else None
            elif err:
                doc["error"] = codec.loads(err)
                if not self._settings.expose_tracebacks:
                    doc["error"].pop("traceback", None)
            report = await self._callback(url.decode(), codec.dumps(doc), ctx.run_id)
            ops += ["S", "cb", codec.dumps(report), ""]
        await run_ended(self._backend, self._settings, self._clock, flow, status, fetched, ctx)
        return ops

    async def _hooks(
        self, flow: Flow, status: Status, err: bytes | None, ctx: Context
    ) -> list[dict[str, str]]:
        """on_failure (of a failed run), then finally_; answers what they raised."""
        hook_errors = []
        hooks: list[tuple[str, Callable[..., Any] | None, tuple[Any, ...]]] = [
            ("finally_", flow.finally_, (status, ctx))
        ]
        if status is Status.FAILED:
            error = RunFailed.from_error(ctx.run_id, codec.loads(err) if err else {})
            hooks.insert(0, ("on_failure", flow.on_failure, (error, ctx)))
        for name, hook, args in hooks:
            if hook is None:
                continue
            try:
                out = hook(*args)
                if inspect.isawaitable(out):
                    await out
            except Exception as e:
                log.exception("flow %s hook %s raised for run %s", flow.name, name, ctx.run_id)
                hook_errors.append({"hook": name, "type": type(e).__name__, "message": str(e)})
        return hook_errors

    async def _callback(self, url: str, body: bytes, run_id: str) -> dict[str, Any]:
        """POST ``body`` to ``url``: up to 3 attempts, 10 s each; the outcome is recorded.
        The URL is checked again here (its host may resolve elsewhere by now)."""
        report: dict[str, Any] = {"url": url, "delivered": False, "attempts": 0}
        try:
            await self._policy.check(url)
        except InvalidCallbackUrl as e:
            log.warning("callback for run %s refused: %s", run_id, e)
            report["error"] = f"refused: {e}"
            return report
        if self._http is None:
            # connections go only to the addresses the resolver checked
            connector = (
                None
                if self._policy.allow_private
                else aiohttp.TCPConnector(resolver=PublicResolver())
            )
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10), connector=connector
            )
        for attempt in range(1, 4):
            report["attempts"] = attempt
            headers = {"Content-Type": "application/json", "X-Run-Id": run_id}
            if self._secrets:
                headers[SIGNATURE_HEADER] = sign(
                    body, self._secrets[0], timestamp=int(self._clock())
                )
            try:
                async with self._http.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    report["status_code"] = resp.status
                    if resp.status < 400:
                        report["delivered"] = True
                        report.pop("error", None)
                        return report
                    report["error"] = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                report["error"] = f"{type(e).__name__}: {e}"
            if attempt < 3:
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        log.warning("callback for run %s to %s failed: %s", run_id, url, report.get("error"))
        return report
