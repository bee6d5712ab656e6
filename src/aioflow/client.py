"""The Python client: start runs and get their results, straight through Redis."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from redis.asyncio import Redis

from . import tracing
from .app import connect
from .engine import Engine, translate
from .errors import ConfigError
from .keys import RunId
from .model import Flow
from .settings import Settings
from .status import RunState, Status


def _name(flow: str | Flow) -> str:
    return flow.name if isinstance(flow, Flow) else flow


class Client:
    """``async with aioflow.Client("redis://...") as client:`` — runs flows.

    Pass a URL or an existing ``redis`` client (which the client will not close).
    Raises :class:`~aioflow.UnknownFlow` for a flow no worker or gateway has
    registered, :class:`~aioflow.RunFailed` / :class:`~aioflow.RunStopped` for
    runs that did not complete, :class:`~aioflow.RedisUnavailable` when Redis
    cannot be reached.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        redis: Redis | None = None,
        result_ttl: float | None = None,
    ) -> None:
        if redis is None:
            url = redis_url or Settings.from_env().redis_url
            if not url:
                raise ConfigError("Client needs a redis_url (or AIOFLOW_REDIS_URL)")
            redis = connect(url)
            self._owned = True
        else:
            self._owned = False
        self.redis = redis
        env = Settings.from_env()
        self.engine = Engine(
            redis,
            result_ttl=result_ttl or env.result_ttl,
            tracing=tracing.configure(env.tracing, role="client"),
            submit_replicas=env.submit_replicas,
            submit_replicas_timeout=env.submit_replicas_timeout,
            max_value=env.max_value,
        )

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
    ) -> str:
        """Start a run and return its id without waiting. ``run_id`` names the run
        (``[A-Za-z0-9_-]{1,64}``): if that run exists, its id is returned and no
        second run starts. ``options`` become ``ctx.options``; ``delay`` defers
        the start by that many seconds. ``callback_url`` gets a POST of the
        result or error when the run ends (see the README)."""
        async with translate():
            rid, _ = await self.engine.submit(
                _name(flow),
                data,
                run_id=run_id,
                options=options,
                delay=delay,
                callback_url=callback_url,
            )
            return str(rid)

    async def execute(
        self,
        flow: str | Flow,
        data: Any = None,
        *,
        timeout: float | None = None,
        run_id: str | None = None,
        options: dict[str, list[str]] | None = None,
        callback_url: str | None = None,
    ) -> Any:
        """Start a run and return its result. Raises RunFailed, RunStopped, or
        ResultTimeout after ``timeout`` seconds (the run goes on)."""
        async with translate():
            rid, outcome = await self.engine.execute(
                _name(flow),
                data,
                timeout=timeout,
                run_id=run_id,
                options=options,
                callback_url=callback_url,
            )
            return self.engine.unwrap(rid, outcome)

    async def result(self, run_id: str, timeout: float | None = None) -> Any:
        """Wait for a run's result (forever when ``timeout`` is None)."""
        async with translate():
            return self.engine.unwrap(run_id, await self.engine.wait(run_id, timeout))

    async def state(self, run_id: str) -> RunState:
        """The run's status, per-vertex status, result or error."""
        async with translate():
            return await self.engine.state(run_id)

    async def pause(self, run_id: str) -> Status:
        """Start no new vertex of the run until :meth:`resume`; running ones finish."""
        async with translate():
            return await self.engine.control(run_id, "pause")

    async def resume(self, run_id: str) -> Status:
        """Continue a paused run where it stood."""
        async with translate():
            return await self.engine.control(run_id, "resume")

    async def stop(self, run_id: str) -> Status:
        """End the run ``stopped``: cancel its running nodes, start nothing more."""
        async with translate():
            return await self.engine.control(run_id, "stop")

    async def retry(self, run_id: str) -> int:
        """Rerun a failed run: its failed vertices and everything downstream run
        again; stored results of vertices that succeeded are reused. Answers the
        number of vertices enqueued; raises InvalidTransition unless failed."""
        async with translate():
            return await self.engine.retry(run_id)

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters of every flow: id, run_id, vertex, reason, deliveries."""
        async with translate():
            return await self.engine.dead_letters(limit)

    async def replay(self, dead_letter_id: str) -> str:
        """Replay a dead letter: its run reruns from the failed vertices. Answers the run id."""
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
        """A page of the flow's runs, newest first, and the cursor of the next page."""
        async with translate():
            return await self.engine.runs(_name(flow), status=status, limit=limit, cursor=cursor)


__all__ = ["Client", "RunId"]
