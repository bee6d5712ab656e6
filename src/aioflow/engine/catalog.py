"""The flow definitions runs are submitted against, as the registry holds them:
a flow's registered doc, the version a new run pins, the partition a run id
lands in and the plan a run executes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aioflow.core import codec
from aioflow.core.errors import InvalidRunId, UnknownFlow, UnknownVersion
from aioflow.definitions.model import Flow
from aioflow.definitions.plan import Plan, compile_dag, dag_from_description
from aioflow.definitions.versions import version_of
from aioflow.store import keys
from aioflow.store.keys import RunId
from aioflow.store.topology import Backend

from .registry import FlowInfo, Pins, fv_key, partitions_of


class Catalog:
    """What an engine knows of the flows in the registry. A flow's doc read by
    :meth:`flow_info` is kept for good; :meth:`pin` follows the newest served
    version through ``pins``."""

    def __init__(self, backend: Backend, pins: Pins) -> None:
        self.backend = backend
        self.pins = pins
        self._flows: dict[str, FlowInfo] = {}
        self._pinned: dict[str, tuple[dict[str, Any], FlowInfo]] = {}  # newest doc -> info
        self._held: dict[str, Flow] = {}

    def hold(self, flows: Iterable[Flow]) -> None:
        """Keep these flow objects, so that new runs of them submitted by name are
        validated at the door (:mod:`.door`) while the version they pin is the object's.
        A gateway holds its app's flows; a Flow object submitted is held as it is pinned."""
        for flow in flows:
            self._held[flow.name] = flow

    def held_flows(self) -> list[Flow]:
        """Every flow object held (see :meth:`hold`)."""
        return list(self._held.values())

    def held(self, info: FlowInfo) -> Flow | None:
        """The flow object held for ``info``'s name when ``info`` is its version."""
        flow = self._held.get(info.name)
        return flow if flow is not None and version_of(flow) == info.version else None

    def remember(self, info: FlowInfo) -> None:
        """Answer ``info`` for its flow from now on (a definition just read from Redis)."""
        self._flows[info.name] = info

    async def flow_info(self, name: str) -> FlowInfo:
        info = self._flows.get(name)
        if info is None:
            keys.check_flow_name(name)
            await self.backend.start()
            raw: Any = await self.backend.redis.hget(keys.FLOWS, name)
            if raw is None:
                raise UnknownFlow(
                    f"unknown flow {name!r}: no worker or gateway serving it has registered it"
                )
            info = FlowInfo.from_doc(codec.loads(raw))
            self._flows[name] = info
        return info

    async def flows(self) -> list[FlowInfo]:
        await self.backend.start()
        raw: Any = await self.backend.redis.hgetall(keys.FLOWS)
        return [FlowInfo.from_doc(codec.loads(doc)) for _, doc in sorted(raw.items())]

    async def pin(self, flow: str | Flow, version: str | None = None) -> FlowInfo:
        if isinstance(flow, Flow):
            self._held[flow.name] = flow
            version = await self.pins.ensure(flow)
            flow = flow.name
        keys.check_flow_name(flow)
        if version is not None:
            doc = await self.pins.doc(flow, version)
            if doc is None:
                raise UnknownVersion(f"flow {flow!r} has no version {version!r} in the registry")
            return FlowInfo.from_doc(doc)
        doc = await self.pins.newest(flow)
        if doc is None:
            return await self.flow_info(flow)
        hit = self._pinned.get(flow)
        if hit is None or hit[0] is not doc:  # the same doc while the pins cache holds it
            hit = self._pinned[flow] = (doc, FlowInfo.from_doc(doc))
        return hit[1]

    async def new_run_id(
        self, flow: str, run_id: str | None = None, info: FlowInfo | None = None
    ) -> RunId:
        info = info or await self.flow_info(flow)
        if run_id is None:
            key = keys.new_key()
            part = keys.partition_for(key, info.partitions, caller_chosen=False)
        else:
            key = keys.check_run_key(run_id)
            part = keys.partition_for(key, info.partitions, caller_chosen=True)
        return RunId(flow, part, key)

    async def run_id(self, run_id: str | RunId, flow: str | Flow | None = None) -> RunId:
        name = flow.name if isinstance(flow, Flow) else flow
        if isinstance(run_id, RunId):
            if name is not None and run_id.flow != name:
                raise InvalidRunId(f"run id {run_id} does not belong to flow {name!r}")
            return run_id
        ref = keys.parse_run_ref(run_id, name)
        if isinstance(ref, RunId):
            return ref
        assert flow is not None and name is not None  # parse_run_ref saw to it
        now, before = await self._partition_counts(flow)
        parts = sorted({keys.partition_for(ref, n, caller_chosen=True) for n in {now, *before}})
        if len(parts) > 1:
            # versions with different partition counts: the run is where it was created
            rids = [RunId(name, p, ref) for p in parts]
            async with self.backend.redis.pipeline(transaction=False) as pipe:
                for rid in rids:
                    pipe.exists(rid.run)
                found = await pipe.execute()
            for rid, there in zip(rids, found, strict=True):
                if there:
                    return rid
        # where a run submitted now with this id goes
        return RunId(name, keys.partition_for(ref, now, caller_chosen=True), ref)

    async def _partition_counts(self, flow: str | Flow) -> tuple[int, set[int]]:
        """The partition count a run of ``flow`` submitted now gets, and those of the
        flow's registered versions (older runs live under theirs)."""
        await self.backend.start()
        if isinstance(flow, Flow):
            name, now = flow.name, partitions_of(flow, self.backend.fast)
        else:
            name, now = flow, (await self.pin(flow)).partitions
        before: set[int] = set()
        raw: Any = await self.backend.redis.hkeys(fv_key(name))
        for v in raw:
            doc = await self.pins.doc(name, v.decode())
            if doc is not None:
                before.add(int(doc.get("partitions") or 1))
        return now, before

    async def plan(self, flow: str) -> Plan:
        info = await self.flow_info(flow)
        return compile_dag(dag_from_description(info.definition["dag"]))

    async def run_plan(self, rid: RunId) -> Plan:
        await self.backend.start()
        v: Any = await self.backend.redis.hget(rid.run, "v")
        if not v:
            return await self.plan(rid.flow)
        held = self._held.get(rid.flow)
        if held is not None and version_of(held) == v.decode():
            return compile_dag(held)  # the object itself: its functions and types too
        doc = await self.pins.doc(rid.flow, v.decode())
        if doc is None:
            raise UnknownVersion(
                f"run {rid} is pinned to version {v.decode()} of flow {rid.flow!r}, "
                "which is no longer in the registry (nobody served it for version_retention)"
            )
        return compile_dag(dag_from_description(doc["definition"]["dag"]))
