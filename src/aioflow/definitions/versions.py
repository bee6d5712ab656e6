"""Flow versions: what a definition's version is, the registry of the versions
that are served, and how a worker leaves other versions' messages alone.

Design
------
**Version.** The first 12 hex digits of the SHA-256 of the canonical JSON
(sorted keys, vertices and edges sorted) of the flow's shape: what
``Flow.describe()`` gives (vertices and their kinds, retries, timeouts, which
aggregates, ``on_failure`` and ``forward`` functions exist, edges and their
``data`` flag, nested dags, branch conditions, entries, exits, partitions),
plus each node's full retry policy and whether the flow has hooks. Code is not
hashed: a new function body under the same shape keeps the version.

**Registry.** Off the hot path, with redis-py; every command names one key, or
two keys of one hash tag ``{flow}`` (one Cluster slot)::

    af:flows             hash  name -> the newest registered doc (listing, unknown flows)
    af:fv:{<flow>}       hash  version -> doc {name, version, registered, partitions,
                               entries, hooks, definition}; written once (HSETNX)
    af:fvseen:{<flow>}   zset  version -> last time a worker or gateway serving it was seen
    af:workers           hash  worker heartbeats list ``"versions": {flow: version}``

Workers refresh their versions' score every housekeeping pass, gateways every
few seconds. A version not seen for ``version_retention`` is dropped (one
script over the two keys of its flow). ``registered`` is the time a version
first entered the registry.

**Pinning.** ``submit.lua`` stores the version in the run hash (``v``). A Flow
object pins its own version; a name pins the *newest served* version: among
the versions seen within ``version_wait`` seconds, the one registered last
(none seen: the one ``af:flows`` holds). Runs without ``v`` (older clients)
run on any version.

**Other versions' messages.** ``claim.lua`` gets the worker's version of the
stream's flow and compares it with the run's ``v``. On a difference it parks
the message: ``XCLAIM`` to the pseudo-consumer ``v:<version>`` of the same
group, ``JUSTID`` with ``RETRYCOUNT`` one less than the deliveries, which
undoes the read's count. The message so stays in the stream's pending list:
nothing is lost if anyone dies, trimming never passes it, ``max_deliveries``
does not move, no slot is held and nobody polls it. The parking worker
publishes ``adopt <version> <stream>`` on ``af:ctl``; a worker serving that
version (also on every housekeeping pass, for a missed message) adopts it up
to its free slots with the ``adopt`` script, which moves only entries still
owned by the pseudo-consumer (two adopters never both get one), and starts it
like a read message. ``XAUTOCLAIM`` cannot skip consumers: a message parked
longer than ``visibility_timeout`` is reclaimed like any idle one; a worker of
its version runs it, another parks it again (undoing that count too). Fencing
is unchanged: completions check the owner of the pending entry.

**Failing.** A version is *live* while a worker heartbeat within
``version_wait`` lists it. Every housekeeping pass a worker looks at the
pseudo-consumers of its streams (``XINFO CONSUMERS``); for a version that is
not live, the ``vfail`` script fails each parked message's run whose last
chance, ``max(last beat of a worker serving it, run created) +
version_wait``, has passed (error type ``VersionUnavailable`` naming the flow,
the version and the live versions), and acks messages of runs that ended.
Flow hooks and callbacks of an ended run (``$final``) are not version-checked.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from typing import TYPE_CHECKING, Any

import orjson

from .model import Dag, Flow
from .plan import compile_dag

if TYPE_CHECKING:
    pass

log = logging.getLogger("aioflow.versions")
_cache: weakref.WeakKeyDictionary[Dag, tuple[Any, str]] = weakref.WeakKeyDictionary()


# -- the version of a definition ------------------------------------------------------


def _canonical(d: dict[str, Any]) -> dict[str, Any]:
    out = dict(d)
    if "vertices" in out:
        vs = []
        for v in out["vertices"]:
            v = dict(v)
            if v.get("timeout") is not None:
                v["timeout"] = float(v["timeout"])
            if "dag" in v:
                v["dag"] = _canonical(v["dag"])
            if "branches" in v:
                v["branches"] = {c: _canonical(b) for c, b in v["branches"].items()}
                v["conditions"] = sorted(v["conditions"])
            vs.append(v)
        out["vertices"] = sorted(vs, key=lambda v: v["name"])
        out["edges"] = sorted(out["edges"], key=lambda e: (e["from"], e["to"]))
        out["entries"] = sorted(out["entries"])
        out["exits"] = sorted(out["exits"])
    return out


def _policies(dag: Dag, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, v in dag.vertices.items():
        r = v.retry
        out[prefix + name] = [
            r.retries,
            float(r.backoff),
            float(r.multiplier),
            float(r.max_delay),
            float(r.jitter),
            sorted(f"{c.__module__}.{c.__qualname__}" for c in r.retry_on),
        ]
        if v.dag is not None:
            out.update(_policies(v.dag, f"{prefix}{name}/"))
        for c, b in v.branches.items():
            out.update(_policies(b, f"{prefix}{name}[{c}]/"))
    return out


def shape(flow: Flow) -> dict[str, Any]:
    """What the version hashes: the canonical description plus what it leaves out."""
    doc = _canonical(flow.describe())
    doc["dag"] = _canonical(doc["dag"])
    doc["retry"] = _policies(flow)
    doc["hooks"] = [flow.on_failure is not None, flow.finally_ is not None]
    return doc


def version_of(flow: Flow) -> str:
    """The version of ``flow``: 12 hex digits of the SHA-256 of its canonical shape."""
    plan = compile_dag(flow)
    hit = _cache.get(flow)
    if hit is not None and hit[0] is plan:
        return hit[1]
    v = hashlib.sha256(orjson.dumps(shape(flow), option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
    _cache[flow] = (plan, v)
    return v
