"""The control listener: the worker's subscription to the control channel.

``stop <run id>`` cancels the nodes of that run running here; ``adopt <version>
<stream>`` tells the versions that messages were parked for a version this
worker serves. The channel is only a fast path: the housekeeping polls the
status of the runs with nodes here (:meth:`ControlListener.cancel_stopped`),
and adopts parked messages on every pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from aioflow.core.settings import Settings
from aioflow.definitions.model import Flow
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.outage import REDIS_ERRORS
from aioflow.store.topology import RedisClient

from .parking import WorkerVersions
from .vertex import Msg

log = logging.getLogger("aioflow.worker")


class Host(Protocol):
    """What the control listener needs of the worker."""

    settings: Settings
    streams: dict[str, Flow]
    versions: WorkerVersions
    _stopping: asyncio.Event
    _inflight: dict[tuple[str, bytes], tuple[Msg, asyncio.Task[None]]]
    _by_run: dict[tuple[str, str], set[bytes]]

    @property
    def redis(self) -> RedisClient: ...


class ControlListener:
    """Listens on the control channel (:meth:`run` is its task) and stops runs' nodes."""

    def __init__(self, worker: Host) -> None:
        self.w = worker

    async def run(self) -> None:
        w = self.w
        while not w._stopping.is_set():
            ps = w.redis.pubsub()
            # a quiet channel is pinged: a link that stays silent (stalled without a
            # reset) is dropped and subscribed again instead of staying deaf
            quiet = max(0.5, w.settings.redis_timeout / 2)
            try:
                await ps.subscribe(keys.CONTROL)
                heard = time.monotonic()
                while not w._stopping.is_set():
                    msg = await ps.get_message(timeout=1.0)
                    now = time.monotonic()
                    if msg is not None:
                        heard = now
                        if msg["type"] == "message":
                            self.on_control(msg["data"].decode())
                    elif now - heard > quiet + w.settings.redis_timeout:
                        raise TimeoutError(f"control channel silent for {now - heard:.0f} s")
                    elif now - heard > quiet:
                        await ps.ping()
            except Exception as e:  # Redis away, or redis-py's cluster pub/sub failing
                log.debug("control channel lost (%r); subscribing again", e)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await ps.aclose()

    def on_control(self, text: str) -> None:
        """One message of the control channel: ``stop <run id>`` or ``adopt <version>
        <stream>``."""
        w = self.w
        action, _, run_id = text.partition(" ")
        if action == "adopt":
            w.versions.wake(run_id)
            return
        if action != "stop":
            return
        try:
            rid = RunId.parse(run_id)
        except Exception:
            return
        mids = [
            (s, m)
            for s in keys.streams(rid.flow, rid.partition)
            for m in w._by_run.get((s, rid.key), ())
        ]
        for key in mids:
            item = w._inflight.get(key)
            if item is not None:
                log.info("stopping %s of run %s", item[0].addr, run_id)
                item[0].cancelled = "stop"
                item[1].cancel()

    async def cancel_stopped(self) -> None:
        """Cancel nodes of runs stopped meanwhile: the pub/sub stop message is only a
        fast path, a worker whose subscription dropped still finds out here."""
        w = self.w
        runs = list(w._by_run)
        if not runs:
            return
        async with w.redis.pipeline(transaction=False) as pipe:
            for stream, uid in runs:
                pipe.hget(f"{keys.stream_tag(stream)}:r:{uid}", "status")
            statuses = await pipe.execute()
        for (stream, uid), st in zip(runs, statuses, strict=True):
            if st == b"stopped":
                flow = w.streams[stream].name
                part = stream.split(":")[-2].rstrip("}")
                self.on_control(f"stop {flow}.{part}.{uid}")
