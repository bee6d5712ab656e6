"""Rerun a failed run from where it failed, reusing every stored result."""

from __future__ import annotations

from typing import Any

from redis.exceptions import WatchError

from aioflow.core import codec
from aioflow.core.errors import InvalidTransition, RunNotFound
from aioflow.definitions.plan import Plan, child_scope
from aioflow.definitions.waits import WAITS
from aioflow.store.keys import RunId
from aioflow.store.topology import RedisClient

GROUPS = ("subdag", "branch", "foreach")


class _Reseed:
    """Walks a run's scopes and works out what to enqueue again.

    A vertex with a stored output is done. A group that was opened is entered
    and its scopes reseeded; its scope counter is set to the scopes already
    complete, its status back to ``running``. Any other vertex whose parents are
    all done (the one that failed, those the failure cancelled) is enqueued again,
    status ``queued``; one still waiting for parents gets its counter set to the
    parents done.
    """

    def __init__(self, h: dict[bytes, bytes]) -> None:
        self.h = h
        self.enqueue: list[tuple[str, str, bytes]] = []
        self.fields: dict[Any, Any] = {}

    def done(self, addr: str) -> bool:
        return f"o:{addr}".encode() in self.h

    def scope(self, plan: Plan, scope: str, scope_input: bytes) -> bool:
        for name, node in plan.nodes.items():
            addr = scope + name
            if self.done(addr):
                continue
            opened = f"gn:{addr}".encode() in self.h
            if node.kind in GROUPS and opened:
                keys: list[str] = codec.loads(self.h[f"gk:{addr}".encode()])
                complete = 0
                for k in keys:
                    inner = node.branches[k] if node.kind == "branch" else node.inner
                    assert inner is not None
                    sub = child_scope(scope, name, k)
                    value = self.h.get(f"gi:{sub}".encode(), codec.ENCODED_NONE)
                    if self.scope(inner, sub, value):
                        complete += 1
                self.fields[f"gc:{addr}"] = complete
                self.fields[f"s:{addr}"] = "running"
                if complete == len(keys):
                    self.enqueue.append((addr, "c", b""))
                continue
            done_parents = [p for p in node.parents if self.done(scope + p)]
            if len(done_parents) < len(node.parents):
                if len(node.parents) > 1:
                    self.fields[f"n:{addr}"] = len(done_parents)
                continue
            if not node.parents:
                data = scope_input
            elif len(node.parents) == 1 and node.single_input and len(node.data_in) == 1:
                data = self.h[f"o:{scope}{node.parents[0]}".encode()]
            else:
                data = b""
            self.enqueue.append((addr, "n", data))
            self.fields[f"a:{addr}"] = 0
            self.fields[f"s:{addr}"] = "queued"
            if node.kind in WAITS:  # attempts count from 0 again: open the claim's gate
                self.fields[f"wr:{addr}"] = ""
        return self.done(scope + plan.exit)


async def rerun(
    redis: RedisClient, rid: RunId, plan: Plan, *, on_dead_letter: str | None = None
) -> int:
    """Reopen a failed run: re-enqueue its failed vertices and what waits on them.

    Answers how many vertices were enqueued. Raises InvalidTransition unless the
    run is ``failed``. ``on_dead_letter`` deletes that dead-letter entry in the
    same transaction (a replay).
    """
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(rid.run)
                h: Any = await pipe.hgetall(rid.run)
                if not h or b"status" not in h:
                    raise RunNotFound(f"run {rid} not found (it never existed or it expired)")
                status = h[b"status"].decode()
                if status != "failed":
                    raise InvalidTransition(f"cannot retry run {rid}: it is {status}, not failed")
                walk = _Reseed(h)
                walk.scope(plan, "", h.get(b"input", codec.ENCODED_NONE))
                pipe.multi()  # type: ignore[no-untyped-call]
                walk.fields["status"] = "running"
                pipe.hset(rid.run, mapping=walk.fields)
                pipe.hdel(rid.run, "err", "ended", "o:$final")
                pipe.persist(rid.run)
                for addr, kind, data in walk.enqueue:
                    fields: dict[Any, Any] = {"r": rid.key, "a": addr}
                    if kind != "n":
                        fields["k"] = kind
                    if data:
                        fields["d"] = data
                    pipe.xadd(rid.stream + h.get(b"pr", b"").decode(), fields)
                if on_dead_letter:
                    pipe.xdel(f"{rid.tag}:dlq", on_dead_letter)
                await pipe.execute()
                return len(walk.enqueue)
            except WatchError:
                continue
