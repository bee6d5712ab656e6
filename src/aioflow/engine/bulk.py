"""Submitting runs in bulk: every item checked first, then one script call per
partition per chunk of runs (``submit_many.lua``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from aioflow.core import codec
from aioflow.core.errors import AioflowError, BatchIncomplete, InvalidBatch, InvalidRunId
from aioflow.definitions.model import Flow
from aioflow.observability.tracing import run_span
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.scripts import SCRIPTS
from aioflow.store.topology import Conn

from . import door
from .catalog import Catalog
from .registry import FlowInfo
from .replicas import acknowledged

CHUNK = 500
"""Runs per script call: large enough to amortise the round trip, small enough
that one call keeps Redis busy for a few milliseconds at most."""


class Submitter(Protocol):
    """What a bulk submit uses of the engine it submits through (an
    :class:`~aioflow.engine.engine.Engine`): its settings, read at each call,
    its connection, the version a new run pins and the flow object it holds."""

    fast: Conn
    clock: Callable[[], float]
    tracing: bool
    max_value: int | None
    submit_replicas: int
    submit_replicas_timeout: float

    catalog: Catalog

    async def pin(self, flow: str | Flow, version: str | None = None) -> FlowInfo: ...


def _prepare(
    flow: str,
    partitions: int,
    inputs: Sequence[Any],
    run_ids: Sequence[str | None] | None,
    max_value: int | None = None,
) -> tuple[list[RunId], list[bytes]]:
    """Run ids and encoded inputs for every item; raises InvalidBatch naming the first bad one."""
    if run_ids is not None and len(run_ids) != len(inputs):
        raise InvalidBatch(f"run_ids has {len(run_ids)} items for {len(inputs)} inputs")
    rids: list[RunId] = []
    encoded: list[bytes] = []
    for i, data in enumerate(inputs):
        try:
            encoded.append(codec.encode(data, "input"))
        except (TypeError, ValueError) as e:  # not serialisable; NaN or infinity
            raise InvalidBatch(f"item {i}: {e}", index=i) from None
        if max_value is not None and len(encoded[-1]) > max_value:
            raise InvalidBatch(
                f"item {i}: input is {len(encoded[-1])} bytes, larger than max_value={max_value}",
                index=i,
            )
        chosen = run_ids[i] if run_ids is not None else None
        if chosen is None:
            key = keys.new_key()
            part = keys.partition_for(key, partitions, caller_chosen=False)
        else:
            try:
                key = keys.check_run_key(chosen)
            except InvalidRunId as e:
                raise InvalidBatch(f"item {i}: {e}", index=i) from None
            part = keys.partition_for(key, partitions, caller_chosen=True)
        rids.append(RunId(flow, part, key))
    return rids, encoded


async def submit_many(
    engine: Submitter,
    flow: str | Flow,
    inputs: Iterable[Any],
    *,
    options: dict[str, list[str]] | None = None,
    run_ids: Sequence[str | None] | None = None,
) -> list[tuple[RunId, bool]]:
    """Start one run per input; answers (run id, created) in input order.

    Nothing is sent before every item has been checked. A caller-chosen id that
    exists already (or repeats within the batch) is not started again: its
    position answers the existing run's id with ``created`` False.
    """
    info = await engine.pin(flow)  # the version every run of the batch pins, as submit
    flow = info.name
    items = door.admit_many(engine.catalog.held(info), list(inputs))
    rids, encoded = _prepare(flow, info.partitions, items, run_ids, engine.max_value)
    opts = codec.dumps(options or {})
    tps = [""] * len(items)
    if engine.tracing:
        for i, rid in enumerate(rids):
            with run_span(flow, str(rid)) as tp:
                tps[i] = tp
    by_part: dict[int, list[int]] = {}
    for i, rid in enumerate(rids):
        by_part.setdefault(rid.partition, []).append(i)
    calls = [
        (part, idx[s : s + CHUNK])
        for part, idx in sorted(by_part.items())
        for s in range(0, len(idx), CHUNK)
    ]
    head: list[Any] = [repr(engine.clock()), opts, "1" if info.hooks else "", info.version]
    head += [len(info.entries), *info.entries]

    async def send(part: int, idx: list[int]) -> Any:
        args: list[Any] = list(head)
        for i in idx:
            args += (rids[i].key, encoded[i], tps[i])
        return await SCRIPTS.call(engine.fast, "submit_many", keys.stream(flow, part), *args)

    replies = await asyncio.gather(*(send(p, idx) for p, idx in calls), return_exceptions=True)
    created = [False] * len(items)
    failed: list[int] = []
    first_error: BaseException | None = None
    for (_, idx), reply in zip(calls, replies, strict=True):
        if isinstance(reply, BaseException):
            failed += idx
            first_error = first_error or reply
            continue
        for i, flag in zip(idx, reply, strict=True):
            created[i] = flag == ord("1")
    if first_error is not None:
        if not isinstance(first_error, Exception) or isinstance(first_error, AioflowError):
            raise first_error
        lost = set(failed)
        raise BatchIncomplete(
            f"Redis failed during submit_many ({type(first_error).__name__}: {first_error}): "
            f"{len(items) - len(lost)} of {len(items)} runs confirmed, {len(lost)} unknown",
            submitted=[str(r) for i, r in enumerate(rids) if i not in lost],
            unknown={i: str(rids[i]) for i in sorted(lost)},
        ) from first_error
    if engine.submit_replicas:  # as submit does: WAIT once on each partition's master
        for idx in by_part.values():
            await acknowledged(
                engine.fast, rids[idx[0]], engine.submit_replicas, engine.submit_replicas_timeout
            )
    return list(zip(rids, created, strict=True))
