"""The Python client: start runs and get their results, straight through Redis."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, overload

from redis.asyncio import Redis

from aioflow.core.errors import ConfigError, UnknownFlow
from aioflow.core.settings import Settings
from aioflow.definitions.model import Flow
from aioflow.definitions.priority import Priority
from aioflow.definitions.status import RunState, Status
from aioflow.definitions.types import load_as, result_types
from aioflow.engine import door, schedule
from aioflow.engine.engine import Engine, register, translate
from aioflow.observability import tracing
from aioflow.store.connect import connect
from aioflow.store.keys import RunId

from .http_client import HttpClient


def _name(flow: str | Flow) -> str:
    return flow.name if isinstance(flow, Flow) else flow


def _flow_name(flow: str | Flow | None) -> str | None:
    return None if flow is None else _name(flow)


T = TypeVar("T")


def _admit(flow: str | Flow, data: Any) -> Any:
    # over HTTP the gateway validates again; this turns typed objects into JSON first
    return door.admit(flow, data) if isinstance(flow, Flow) else data


def _typed(flow: str | Flow | None, value: Any, result_type: Any) -> Any:
    """A run's JSON result as ``result_type``, else as the return annotation of the
    flow object's exit node; as it is otherwise."""
    if result_type is not None:
        return load_as(result_type, value)
    types = result_types(flow) if isinstance(flow, Flow) else None
    return value if types is None else types.load_result(value)


DEV_URL_FILE = Path(".aioflow") / "redis.url"


def default_url() -> str:
    """``AIOFLOW_REDIS_URL``, else the ``.aioflow/redis.url`` that ``aioflow dev`` wrote
    in the working directory; raises ConfigError when there is neither."""
    url = Settings.from_env().redis_url
    if url:
        return url
    try:
        url = DEV_URL_FILE.read_text().strip()
    except FileNotFoundError:
        url = ""
    if not url:
        raise ConfigError(
            "Client() found no Redis: pass a URL (redis://... or http(s)://gateway), set "
            f"AIOFLOW_REDIS_URL, or start `aioflow dev` here (it writes {DEV_URL_FILE})"
        )
    return url


class Client:
    """``async with aioflow.Client("redis://...") as client:`` — runs flows.

    Pass a ``redis://`` URL (direct), an ``http(s)://`` gateway URL (with
    ``token=`` when the gateway wants one; the same methods over HTTP, see
    :class:`~aioflow.http_client.HttpClient`), or an existing ``redis`` client
    (which the client will not close). With none, ``AIOFLOW_REDIS_URL`` is used,
    then the ``.aioflow/redis.url`` that ``aioflow dev`` writes in the working
    directory; :class:`~aioflow.ConfigError` when there is no such thing.
    Raises :class:`~aioflow.UnknownFlow` for a flow no worker or gateway has
    registered (submitting a :class:`~aioflow.Flow` object registers it instead),
    :class:`~aioflow.RunFailed` / :class:`~aioflow.RunStopped` for runs that did
    not complete, :class:`~aioflow.RedisUnavailable` when Redis (or, over HTTP,
    the gateway: :class:`~aioflow.GatewayUnavailable`) cannot be reached.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        redis: Redis | None = None,
        result_ttl: float | None = None,
        token: str | None = None,
    ) -> None:
        self._http: HttpClient | None = None
        self._owned = False
        if redis is None:
            url = redis_url or default_url()
            if url.startswith(("http://", "https://")):
                self._http = HttpClient(url, token=token)
                return
            redis = connect(url)
            self._owned = True
        self._redis = redis
        env = Settings.from_env()
        self._engine = Engine.from_settings(
            redis,
            env,
            result_ttl=result_ttl or env.result_ttl,
            tracing=tracing.configure(env.tracing, role="client"),
        )

    @property
    def redis(self) -> Redis:
        """The Redis client (not in HTTP mode: ConfigError)."""
        if self._http is not None:
            raise ConfigError("an HTTP client has no Redis connection")
        return self._redis

    @property
    def engine(self) -> Engine:
        if self._http is not None:
            raise ConfigError("an HTTP client has no engine")
        return self._engine

    async def _registering(self, flow: str | Flow, call: Any) -> Any:
        """``call()``; on UnknownFlow for a Flow object, register it and call again."""
        try:
            return await call()
        except UnknownFlow:
            if not isinstance(flow, Flow):
                raise
        await self.engine.start()
        await register(self.engine.redis, [flow], fast=self.engine.fast)
        return await call()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            return
        await self.engine.close()
        if self._owned:
            await self.redis.aclose()

    async def submit(
        self,
        flow: str | Flow,
        data: Any = None,
        *,
        run_id: str | None = None,
        options: dict[str, list[str]] | None = None,
        delay: float | None = None,
        callback_url: str | None = None,
        priority: Priority | None = None,
    ) -> str:
        """Start a run and return its id without waiting. ``run_id`` names the run
        (``[A-Za-z0-9_-]{1,64}``): if that run exists, its id is returned and no
        second run starts. ``options`` become ``ctx.options``; ``delay`` defers
        the start by that many seconds (not over HTTP). ``callback_url`` gets a
        POST of the result or error when the run ends (see the README). A ``Flow``
        object pins the run to its own version (registering it if needed); a name
        pins the newest version served (see the README's "Versions and rolling
        deploys"). A typed flow's input may be a typed object; one its entry node's
        annotation rejects raises :class:`~aioflow.InvalidInput` (see :meth:`execute`).
        ``priority``
        is ``"high"``, ``"default"`` or ``"low"``: workers take higher priorities
        first, weighted so that lower ones still progress; every vertex of the run
        keeps it. Raises :class:`InvalidPriority` for another value."""
        if self._http is not None:
            return await self._http.submit(
                _name(flow),
                _admit(flow, data),
                run_id=run_id,
                options=options,
                delay=delay,
                callback_url=callback_url,
                priority=priority,
            )

        async def call() -> str:
            rid, _ = await self.engine.submit(
                flow,
                data,
                run_id=run_id,
                options=options,
                delay=delay,
                callback_url=callback_url,
                priority=priority,
            )
            return str(rid)

        async with translate():
            return str(await self._registering(flow, call))

    async def submit_many(
        self,
        flow: str | Flow,
        inputs: Iterable[Any],
        *,
        options: dict[str, list[str]] | None = None,
        run_ids: Sequence[str | None] | None = None,
    ) -> list[str]:
        """Start one run per input and return their ids, in input order.

        ``run_ids``, when given, has one entry per input: a caller-chosen id
        (deduplicated as with :meth:`submit`: an id that exists, or repeats in
        the batch, answers the existing run's id and starts nothing) or None for
        a generated one. ``options`` become every run's ``ctx.options``.

        Every item is checked before anything is sent: a value that cannot be
        serialised or is larger than ``max_value``, a malformed id or a
        ``run_ids`` of the wrong length, an input a typed flow's entry rejects (``index``
        and ``errors`` say which and why) raises :class:`~aioflow.InvalidBatch`
        and no run is submitted. Runs go out as one script call per partition
        per 500 runs; each call is atomic. If Redis fails part-way,
        :class:`~aioflow.BatchIncomplete` lists the run ids that were confirmed
        and those whose fate is unknown. Over HTTP this is one
        ``POST /flow/{name}/batch`` (at most the gateway's ``max_batch`` items).
        """
        if self._http is not None:
            held = flow if isinstance(flow, Flow) else None  # typed objects go as JSON
            return await self._http.submit_many(
                _name(flow), door.admit_many(held, list(inputs)), options=options, run_ids=run_ids
            )

        async def call() -> list[str]:
            pairs = await self.engine.submit_many(flow, inputs, options=options, run_ids=run_ids)
            return [str(rid) for rid, _ in pairs]

        async with translate():
            ids: list[str] = await self._registering(flow, call)
            return ids

    @overload
    async def execute(
        self,
        flow: str | Flow,
        data: Any = None,
        *,
        timeout: float | None = None,
        run_id: str | None = None,
        options: dict[str, list[str]] | None = None,
        callback_url: str | None = None,
        priority: Priority | None = None,
        result_type: type[T],
    ) -> T: ...

    @overload
    async def execute(
        self,
        flow: str | Flow,
        data: Any = None,
        *,
        timeout: float | None = None,
        run_id: str | None = None,
        options: dict[str, list[str]] | None = None,
        callback_url: str | None = None,
        priority: Priority | None = None,
        result_type: None = None,
    ) -> Any: ...

    async def execute(
        self,
        flow: str | Flow,
        data: Any = None,
        *,
        timeout: float | None = None,
        run_id: str | None = None,
        options: dict[str, list[str]] | None = None,
        callback_url: str | None = None,
        priority: Priority | None = None,
        result_type: Any = None,
    ) -> Any:
        """Start a run and return its result. Raises RunFailed, RunStopped, or
        ResultTimeout after ``timeout`` seconds (the run goes on). ``priority``
        as for :meth:`submit`. A typed flow's input may be a typed object (a model
        instance...); an input its entry rejects raises :class:`~aioflow.InvalidInput`
        and no run is created. The result is validated into ``result_type`` when given,
        else, for a Flow object, into its exit node's return annotation (JSON otherwise)."""
        out = await self._execute(flow, data, timeout, run_id, options, callback_url, priority)
        return _typed(flow, out, result_type)

    async def _execute(
        self,
        flow: str | Flow,
        data: Any,
        timeout: float | None,
        run_id: str | None,
        options: dict[str, list[str]] | None,
        callback_url: str | None,
        priority: Priority | None,
    ) -> Any:
        if self._http is not None:
            return await self._http.execute(
                _name(flow),
                _admit(flow, data),
                timeout=timeout,
                run_id=run_id,
                options=options,
                callback_url=callback_url,
                priority=priority,
            )

        async def call() -> Any:
            rid, outcome = await self.engine.execute(
                flow,
                data,
                timeout=timeout,
                run_id=run_id,
                options=options,
                callback_url=callback_url,
                priority=priority,
            )
            return self.engine.unwrap(rid, outcome)

        async with translate():
            return await self._registering(flow, call)

    @overload
    async def result(
        self,
        run_id: str,
        timeout: float | None = None,
        *,
        flow: str | Flow | None = None,
        result_type: type[T],
    ) -> T: ...

    @overload
    async def result(
        self,
        run_id: str,
        timeout: float | None = None,
        *,
        flow: str | Flow | None = None,
        result_type: None = None,
    ) -> Any: ...

    async def result(
        self,
        run_id: str,
        timeout: float | None = None,
        *,
        flow: str | Flow | None = None,
        result_type: Any = None,
    ) -> Any:
        """Wait for a run's result (forever when ``timeout`` is None).

        ``run_id`` is the id :meth:`submit` returned, or, with ``flow``, the
        ``run_id=`` its caller chose (as for every method below). Raises
        :class:`~aioflow.InvalidRunId` for a caller-chosen id without ``flow``.
        The result is typed as :meth:`execute`'s (``result_type``, else a Flow
        object's exit annotation)."""
        if self._http is not None:
            out = await self._http.result(run_id, timeout, flow=_flow_name(flow))
            return _typed(flow, out, result_type)
        async with translate():
            rid = await self.engine.run_id(run_id, flow)
            out = self.engine.unwrap(rid, await self.engine.wait(rid, timeout))
        return _typed(flow, out, result_type)

    async def state(self, run_id: str, *, flow: str | Flow | None = None) -> RunState:
        """The run's status, per-vertex status, result or error."""
        if self._http is not None:
            return await self._http.state(run_id, flow=_flow_name(flow))
        async with translate():
            return await self.engine.state(await self.engine.run_id(run_id, flow))

    async def _control(self, run_id: str, flow: str | Flow | None, action: str) -> Status:
        if self._http is not None:
            return await self._http.control(run_id, action, flow=_flow_name(flow))
        async with translate():
            return await self.engine.control(await self.engine.run_id(run_id, flow), action)

    async def pause(self, run_id: str, *, flow: str | Flow | None = None) -> Status:
        """Start no new vertex of the run until :meth:`resume`; running ones finish."""
        return await self._control(run_id, flow, "pause")

    async def resume(self, run_id: str, *, flow: str | Flow | None = None) -> Status:
        """Continue a paused run where it stood."""
        return await self._control(run_id, flow, "resume")

    async def stop(self, run_id: str, *, flow: str | Flow | None = None) -> Status:
        """End the run ``stopped``: cancel its running nodes, start nothing more."""
        return await self._control(run_id, flow, "stop")

    async def retry(self, run_id: str, *, flow: str | Flow | None = None) -> int:
        """Rerun a failed run: its failed vertices and everything downstream run
        again; stored results of vertices that succeeded are reused. Answers the
        number of vertices enqueued; raises InvalidTransition unless failed."""
        if self._http is not None:
            return await self._http.retry(run_id, flow=_flow_name(flow))
        async with translate():
            return await self.engine.retry(await self.engine.run_id(run_id, flow))

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters of every flow: id, run_id, vertex, reason, deliveries."""
        if self._http is not None:
            return await self._http.dead_letters(limit)
        async with translate():
            return await self.engine.dead_letters(limit)

    async def replay(self, dead_letter_id: str) -> str:
        """Replay a dead letter: its run reruns from the failed vertices. Answers the run id."""
        if self._http is not None:
            return await self._http.replay(dead_letter_id)
        async with translate():
            return await self.engine.replay(dead_letter_id)

    async def runs(
        self,
        flow: str | Flow,
        *,
        status: Status | str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> tuple[list[RunState], str | None]:
        """A page of the flow's runs, newest first, and the cursor of the next page.
        Over HTTP the states carry status, created and ended only."""
        if self._http is not None:
            return await self._http.runs(_name(flow), status=status, limit=limit, cursor=cursor)
        async with translate():
            return await self.engine.runs(_name(flow), status=status, limit=limit, cursor=cursor)

    async def send_event(
        self, name: str, data: Any = None, *, key: str | None = None, event_id: str | None = None
    ) -> dict[str, Any]:
        """Send event ``name`` with ``data``: it resolves every run waiting on ``(name,
        key)`` (``key=None``: the key ""), is kept ``event_ttl`` for runs that reach
        such a wait later (counted if sent after the run began), and starts one run
        of each flow with ``on_event=name``. A send with an ``event_id`` sent before
        (``[A-Za-z0-9_-]{1,60}``) changes nothing and answers as the first did.
        Answers ``{"resolved": n, "started": [run ids]}``. Raises InvalidRunId for a
        bad name, key or id, LimitExceeded for data larger than ``max_value``."""
        if self._http is not None:
            return await self._http.send_event(name, data, key=key, event_id=event_id)
        async with translate():
            return await self.engine.send_event(name, data, key=key, event_id=event_id)

    async def signal(
        self, run_id: str, vertex: str, data: Any = None, *, flow: str | Flow | None = None
    ) -> bool:
        """Resolve the ``wait`` vertex ``vertex`` (its address) of a run with ``data``,
        unless an event, signal or timeout did first (then False). A signal sent before
        the run reaches the wait is kept for it. Raises InvalidTransition when
        ``vertex`` is not a wait vertex of the run, RunNotFound, LimitExceeded."""
        if self._http is not None:
            return await self._http.signal(run_id, vertex, data, flow=_flow_name(flow))
        async with translate():
            return await self.engine.signal(await self.engine.run_id(run_id, flow), vertex, data)

    async def schedules(self, flow: str | Flow) -> list[schedule.ScheduleState]:
        """The flow's registered schedules: paused or not, last and next tick."""
        async with translate():
            return await schedule.states(self.engine, _name(flow))

    async def pause_schedule(self, flow: str | Flow, name: str) -> schedule.ScheduleState:
        """Stop the schedule ``name`` of ``flow`` from starting runs, in every
        process, until :meth:`resume_schedule`. Raises UnknownFlow or
        UnknownSchedule."""
        async with translate():
            return await schedule.pause(self.engine, _name(flow), name)

    async def resume_schedule(self, flow: str | Flow, name: str) -> schedule.ScheduleState:
        """Let a paused schedule tick again; the ticks that fell while it was
        paused do not run. Raises UnknownFlow or UnknownSchedule."""
        async with translate():
            return await schedule.resume(self.engine, _name(flow), name)


__all__ = ["Client", "RunId"]
