"""Testing your own flows: a pytest plugin and the helpers behind it.

Installed with aioflow (a ``pytest11`` entry point), so its fixtures are there
in any project that has aioflow and ``pytest-asyncio`` (``aioflow[testing]``),
whatever its ``asyncio_mode``: in pytest-asyncio's default strict mode an
``async def`` test that uses an ``aioflow_*`` fixture is marked
``@pytest.mark.asyncio`` by this plugin.

- ``aioflow_redis_server`` (session): a real ``redis-server`` (from ``PATH``, or
  the one ``aioflow[embedded]`` ships), no persistence.
- ``aioflow_redis_url``: its URL, emptied before the test.
- ``aioflow_clock``: a :class:`FakeClock` that the workers, the scheduler and
  the client of this test read; it moves only when the test advances it.
- ``aioflow_kit``: the :class:`Kit` bundling the above (in-process workers,
  a client, :meth:`Kit.run_flow`).
- ``aioflow_worker``: ``await aioflow_worker(app_or_flow)`` starts an
  in-process :class:`~aioflow.Worker` that runs until the test ends.
- ``aioflow_client``: an :class:`~aioflow.Client` on that Redis and clock.

``await run_flow(app_or_flow, data)`` runs a flow and returns its result (or
raises :class:`~aioflow.RunFailed`); it starts a worker for the flow if the
test has none, and jumps the fake clock over retry backoffs so a test of
retries never sleeps. ``await kit.send_event(name, data, key=...)`` sends an
event at the kit's clock (runs waiting on it resume, ``on_event`` flows start);
``await kit.signal(run_id, vertex, data)`` signals a waiting vertex. ``await
eventually(cond)`` waits for a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

from .client.client import Client
from .core.clock import FakeClock
from .core.errors import ConfigError, ResultTimeout
from .core.settings import Settings
from .definitions.app import App
from .definitions.model import Flow
from .engine import schedule
from .store.connect import connect
from .store.keys import RunId
from .store.redis_server import RedisServer
from .worker.worker import Worker

__all__ = ["FakeClock", "Kit", "eventually", "run_flow"]

Target = App | Flow | Sequence[Flow]
_F = TypeVar("_F", bound=Callable[..., Any])


def _flows(target: Target) -> list[Flow]:
    if isinstance(target, App):
        return list(target.flows)
    if isinstance(target, Flow):
        return [target]
    return list(target)


class Kit:
    """In-process workers and a client on one Redis, all reading one clock.

    ``clock`` is a :class:`FakeClock` (the default) or ``time.time``. Use it
    as ``async with Kit(url) as kit:`` outside pytest; the fixtures make one
    per test.
    """

    def __init__(
        self, redis_url: str, *, clock: Callable[[], float] | None = None, grace: float = 1.0
    ) -> None:
        self.redis_url = redis_url
        self.clock: Callable[[], float] = clock if clock is not None else FakeClock()
        self.grace = grace
        self.redis = connect(redis_url)
        self.client = Client(redis=self.redis)
        self.client.engine.clock = self.clock  # delayed starts on the same time line
        self.workers: list[Worker] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Kit:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def worker(self, target: Target, **settings: Any) -> Worker:
        """Start a worker for ``target`` (an App, a Flow or flows) on this Redis and
        clock; it runs until :meth:`aclose`. When this returns the flows are
        registered and, if they have schedules, the worker's scheduler has read
        the clock: a tick the test then advances to is fired, not missed.
        ``settings`` override the App's (default concurrency 16, grace 1 s)."""
        base = target.settings if isinstance(target, App) else Settings()
        s = base.replace(
            redis_url=self.redis_url,
            **{"concurrency": min(base.concurrency, 16), "grace": self.grace, **settings},
        )
        flows = _flows(target)
        w = Worker(flows, self.redis, settings=s, clock=self.clock)
        await w.prepare()
        self.workers.append(w)
        task = asyncio.create_task(w.run(), name="aioflow-test-worker")
        self._tasks.append(task)
        if any(f.schedules for f in flows):
            await eventually(
                lambda: task.done() or schedule.started(w.backend),
                timeout=10.0,
                what="the worker's scheduler to start",
            )
            if task.done():
                task.result()  # the worker's own error
                raise ConfigError("the worker stopped as soon as it started")
        return w

    def _serving(self, flow: str) -> bool:
        running = zip(self.workers, self._tasks, strict=True)
        return any(flow in w.flows for w, t in running if not t.done())

    async def run_flow(
        self,
        target: Target,
        data: Any = None,
        *,
        flow: str | None = None,
        timeout: float = 10.0,
        autojump: bool = True,
        run_id: str | None = None,
    ) -> Any:
        """Run one flow of ``target`` on ``data`` and return its result; raises
        :class:`~aioflow.RunFailed`, :class:`~aioflow.RunStopped`, or
        :class:`~aioflow.ResultTimeout` after ``timeout`` real seconds.

        ``flow`` names the flow when ``target`` holds several. A worker is
        started for ``target`` unless one already serves the flow. With
        ``autojump`` and a :class:`FakeClock`, whenever the run waits on a
        delayed message (a retry backoff, a delayed start) the clock jumps to
        its due time, so backoffs take no real time.
        """
        names = [f.name for f in _flows(target)]
        if flow is None:
            if len(names) != 1:
                raise ConfigError(f"run_flow: name the flow (flow=...) among {names}")
            flow = names[0]
        if flow not in names:
            raise ConfigError(f"run_flow: {flow!r} is not among {names}")
        if not self._serving(flow):
            await self.worker(target)
        rid = RunId.parse(await self.client.submit(flow, data, run_id=run_id))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        engine = self.client.engine
        while True:
            step = min(0.05, max(0.0, deadline - loop.time()))
            outcome = await engine.wait(rid, step)
            if outcome is not None:
                return engine.unwrap(rid, outcome)
            if loop.time() >= deadline:
                raise ResultTimeout(f"run {rid} did not finish within {timeout} s")
            if autojump and isinstance(self.clock, FakeClock):
                due = await self._next_due(rid)
                if due is not None and due > self.clock():
                    self.clock.now = due

    async def send_event(
        self, name: str, data: Any = None, *, key: str | None = None, event_id: str | None = None
    ) -> dict[str, Any]:
        """Send event ``name`` at the kit's clock (see :meth:`aioflow.Client.send_event`):
        answers ``{"resolved": n, "started": [run ids]}``."""
        return await self.client.send_event(name, data, key=key, event_id=event_id)

    async def signal(
        self, run_id: str, vertex: str, data: Any = None, *, flow: str | None = None
    ) -> bool:
        """Signal the wait vertex ``vertex`` of a run (see :meth:`aioflow.Client.signal`)."""
        return await self.client.signal(run_id, vertex, data, flow=flow)

    async def _next_due(self, rid: RunId) -> float | None:
        """Due time (epoch seconds) of the run's earliest delayed message."""
        z = f"{rid.tag}:z"
        prefix = rid.key.encode() + b"\n"
        engine = self.client.engine
        await engine.start()  # engine.redis routes by slot on a cluster
        rows: Any = await engine.redis.zrange(z, 0, 99, withscores=True)
        for member, score in rows:
            if member.startswith(prefix):
                return float(score) / 1000
        return None

    async def aclose(self) -> None:
        """Stop the workers (draining for ``grace`` seconds) and close the client."""
        for w in self.workers:
            w.stop()
        for t in self._tasks:
            with contextlib.suppress(Exception):
                await t
        self.workers.clear()
        self._tasks.clear()
        await self.client.close()
        await self.redis.aclose()


_current: list[Kit] = []


async def eventually(
    cond: Callable[[], Any], *, timeout: float = 5.0, what: str = "condition"
) -> None:
    """Return once ``cond()`` (plain or async) is true; AssertionError after
    ``timeout`` real seconds. Wait for what workers do with this, not a sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = cond()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def run_flow(
    target: Target,
    data: Any = None,
    *,
    flow: str | None = None,
    redis_url: str | None = None,
    timeout: float = 10.0,
    autojump: bool = True,
) -> Any:
    """Run a flow and return its result, or raise :class:`~aioflow.RunFailed`.

    Inside a test using the ``aioflow_*`` fixtures it runs on the test's Redis,
    clock and workers (see :meth:`Kit.run_flow`); elsewhere pass ``redis_url``
    (a kit with a :class:`FakeClock` lives for the call).
    """
    if redis_url is None:
        if not _current:
            raise ConfigError(
                "run_flow needs a Redis: use it in a test with an aioflow_* fixture "
                "(aioflow_kit, aioflow_worker, ...) or pass redis_url="
            )
        return await _current[-1].run_flow(
            target, data, flow=flow, timeout=timeout, autojump=autojump
        )
    async with Kit(redis_url) as kit:
        return await kit.run_flow(target, data, flow=flow, timeout=timeout, autojump=autojump)


def _flush(url: str) -> None:
    import redis as redis_py

    with redis_py.Redis.from_url(url) as client:
        client.flushall()
        client.script_flush()


# -- the pytest plugin ----------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - imported outside pytest: helpers only
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    def _async_fixture(fn: _F) -> _F:
        try:
            import pytest_asyncio
        except ImportError:  # pragma: no cover - fail at use, not at pytest start-up

            @pytest.fixture(name=fn.__name__)
            def missing() -> None:
                raise ConfigError(
                    f"the {fn.__name__} fixture needs pytest-asyncio: install aioflow[testing]"
                )

            return cast(_F, missing)
        return cast(_F, pytest_asyncio.fixture(fn))

    _FIXTURES = frozenset(
        [
            "aioflow_redis_server",
            "aioflow_redis_url",
            "aioflow_clock",
            "aioflow_kit",
            "aioflow_worker",
            "aioflow_client",
        ]
    )

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_pycollect_makeitem(
        collector: pytest.Module | pytest.Class, name: str, obj: object
    ) -> Any:
        # Innermost wrapper: the items get their mark before pytest-asyncio's wrapper
        # (outside this one) turns marked coroutine tests into asyncio tests. Strict
        # mode (its default) runs only marked ones; a test using our fixtures should
        # not need the user to know that.
        result = yield
        if not inspect.iscoroutinefunction(obj):
            return result
        if not collector.config.pluginmanager.hasplugin("asyncio"):
            return result  # no pytest-asyncio: the fixtures say what to install
        items = result if isinstance(result, list) else [result]
        for item in items:
            if (
                isinstance(item, pytest.Function)
                and item.get_closest_marker("asyncio") is None
                and not _FIXTURES.isdisjoint(item.fixturenames)
            ):
                item.add_marker(pytest.mark.asyncio)
        return result

    @pytest.fixture(scope="session")
    def aioflow_redis_server() -> Iterator[RedisServer]:
        """A redis-server for the session (PATH, or aioflow[embedded]'s), no persistence."""
        with tempfile.TemporaryDirectory(prefix="aioflow-redis-") as d:
            server = RedisServer(dir=d, appendonly=False)
            server.start()
            try:
                yield server
            finally:
                server.stop()

    @pytest.fixture
    def aioflow_redis_url(aioflow_redis_server: RedisServer) -> str:
        """The session server's URL, emptied (FLUSHALL, SCRIPT FLUSH) before the test."""
        _flush(aioflow_redis_server.url)
        return aioflow_redis_server.url

    @pytest.fixture
    def aioflow_clock() -> FakeClock:
        """The test's clock: workers, scheduler and client read it; ``advance()`` moves it."""
        return FakeClock()

    @_async_fixture
    async def aioflow_kit(aioflow_redis_url: str, aioflow_clock: FakeClock) -> AsyncIterator[Kit]:
        """The test's :class:`Kit`; its workers stop when the test ends."""
        kit = Kit(aioflow_redis_url, clock=aioflow_clock)
        _current.append(kit)
        try:
            yield kit
        finally:
            _current.remove(kit)
            await kit.aclose()

    @pytest.fixture
    def aioflow_worker(aioflow_kit: Kit) -> Callable[..., Awaitable[Worker]]:
        """``await aioflow_worker(app_or_flow, **settings)``: an in-process worker
        on the test's Redis and clock, running until the test ends."""
        return aioflow_kit.worker

    @pytest.fixture
    def aioflow_client(aioflow_kit: Kit) -> Client:
        """A client on the test's Redis and clock (``delay=`` follows the clock)."""
        return aioflow_kit.client
