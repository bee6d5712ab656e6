"""The Redis key schema and run ids.

Every key of a run shares the hash tag ``{flow:partition}`` with the stream its
vertices travel on, so each script touches one Cluster slot::

    af:flows                       hash  flow name -> newest registered definition JSON
    af:fv:{flow} / af:fvseen:{flow}  every registered version, and when it was last served
                                   (see :mod:`aioflow.engine.registry`)
    af:{flow:p}:q                  stream of vertex messages, consumer group "workers"
    af:{flow:p}:qh / :ql           the same for runs of priority high / low
    af:{flow:p}:r:<key>            hash  one run: status, input, outputs, counters, store
    af:{flow:p}:p:<key>            list  a paused run's parked vertex messages
    af:{flow:p}:z                  zset  delayed messages (retries, delayed starts, limits) by due
    af:{flow:p}:i                  zset  run index: key -> created time (listing)
    af:{flow:p}:dlq                stream dead letters
    af:{flow:p}:done               pub/sub channel: "<key>\\n<status>\\n<payload>"
    af:ctl                         pub/sub channel: control (stop) messages for workers
    af:workers                     hash  worker name -> heartbeat JSON (host, pid, last read)
    af:sched:<flow>                zset  schedule name -> last tick done (epoch ms, ZADD GT)
    af:sched:<flow>:paused         set   names of the flow's paused schedules
    af:lim:{flow:vertex[:key]}:h   zset  a concurrency limit's slots: holder -> lease expiry
        ...:r / :w / :m / :n              reserved slots, waiters, where they sleep, counter
    af:rate:{flow:vertex[:key]}    hash  a rate limit's token bucket (:r its reservations)
    af:{ev:<name>}:s:<key>         stream kept events of (name, key): fields i (id), d (data)
    af:{ev:<name>}:w:<key>         hash  waiter ref -> deadline (epoch ms, 0: none)
    af:{ev:<name>}:id:<event id>   string an event id seen: its fan-out, then its answer
    af:{ev:<name>}:f               zset  fan-outs in progress: event id -> when to redo it
    af:{ev:<name>}:on              zset  flows an event starts -> when last registered

Limit keys have a hash tag of their own (see :mod:`aioflow.worker.limits`); so do
an event name's keys (see :mod:`aioflow.engine.events`), one Cluster slot per name.

A run id is ``<flow>.<partition>.<key>``: it names its flow and partition.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from dataclasses import dataclass

from aioflow.core.errors import InvalidRunId
from aioflow.definitions.model import FLOW_NAME_RE
from aioflow.definitions.priority import PRIORITIES, SUFFIX
from aioflow.definitions.waits import EVENT_NAME_RE

GROUP = "workers"
FLOWS = "af:flows"
CONTROL = "af:ctl"
WORKERS = "af:workers"
RUN_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# event ids fit in the run key of the runs they start (``ev-<id>``)
EVENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,60}$")
EVENT_KEY_RE = re.compile(r"^[^\x00-\x1f\x7f]{0,256}$")


def check_flow_name(name: str) -> str:
    if not isinstance(name, str) or not FLOW_NAME_RE.fullmatch(name):
        raise InvalidRunId(f"invalid flow name {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class RunId:
    flow: str
    partition: int
    key: str

    def __str__(self) -> str:
        return f"{self.flow}.{self.partition}.{self.key}"

    @property
    def tag(self) -> str:
        return tag(self.flow, self.partition)

    @property
    def run(self) -> str:
        return f"{self.tag}:r:{self.key}"

    @property
    def stream(self) -> str:
        return f"{self.tag}:q"

    def stream_of(self, priority: str) -> str:
        """The stream of this run's partition for ``priority``."""
        return stream(self.flow, self.partition, priority)

    @property
    def parked(self) -> str:
        return f"{self.tag}:p:{self.key}"

    @classmethod
    def parse(cls, run_id: str, flow: str | None = None) -> RunId:
        """Parse and validate a run id; raises :class:`InvalidRunId`."""
        if not isinstance(run_id, str):
            raise InvalidRunId(f"invalid run id {run_id!r}")
        parts = run_id.split(".")
        if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 4:
            raise InvalidRunId(f"invalid run id {run_id!r}: expected <flow>.<partition>.<key>")
        name, part, key = parts
        if not FLOW_NAME_RE.fullmatch(name) or not RUN_KEY_RE.fullmatch(key):
            raise InvalidRunId(f"invalid run id {run_id!r}")
        if flow is not None and name != flow:
            raise InvalidRunId(f"run id {run_id!r} does not belong to flow {flow!r}")
        return cls(name, int(part), key)


def tag(flow: str, partition: int) -> str:
    return f"af:{{{flow}:{partition}}}"


def stream(flow: str, partition: int, priority: str = "default") -> str:
    return f"{tag(flow, partition)}:q{SUFFIX[priority]}"


def streams(flow: str, partition: int) -> list[str]:
    """Every stream of a partition, high priority first."""
    return [stream(flow, partition, p) for p in PRIORITIES]


def stream_tag(stream: str) -> str:
    """The ``af:{flow:p}`` prefix of a partition's stream (any priority)."""
    return stream[: stream.rindex("}") + 1]


def delayed_member(uid: str, addr: str, kind: str, nonce: str, data: bytes | None) -> bytes:
    """A member of a partition's delayed set ``af:{flow:p}:z``: ``uid \\n addr \\n kind
    \\n nonce \\n data``, which ``move.lua`` turns back into a message once due. The
    nonce keeps two delayed copies of one vertex apart."""
    return "\n".join([uid, addr, kind, nonce]).encode() + b"\n" + (data or b"")


def schedules(flow: str) -> str:
    return f"af:sched:{flow}"


def paused_schedules(flow: str) -> str:
    return f"af:sched:{flow}:paused"


def done_channel(flow: str, partition: int) -> str:
    return f"{tag(flow, partition)}:done"


_random = bytearray()


def _forget_random() -> None:
    _random.clear()  # a forked child must not hand out its parent's bytes


os.register_at_fork(after_in_child=_forget_random)


def new_key() -> str:
    """A fresh run key: 12 hex digits of milliseconds, then 10 random hex digits,
    so keys sort by creation time."""
    if len(_random) < 5:
        _random.extend(os.urandom(4096))  # one getrandom() per 819 keys, not per key
    rnd = bytes(_random[-5:])
    del _random[-5:]
    return f"{int(time.time() * 1000):012x}{rnd.hex()}"


_counter = 0


def partition_for(key: str, partitions: int, *, caller_chosen: bool) -> int:
    """A caller-chosen key always maps to the same partition; fresh keys spread round-robin."""
    global _counter
    if partitions == 1:
        return 0
    if caller_chosen:
        return zlib.crc32(key.encode()) % partitions
    _counter += 1
    return _counter % partitions


def check_run_key(key: str) -> str:
    if not isinstance(key, str) or not RUN_KEY_RE.fullmatch(key):
        raise InvalidRunId(f"invalid run id {key!r}: use 1-64 characters of [A-Za-z0-9_-]")
    return key


def parse_run_ref(run_id: str, flow: str | None = None) -> RunId | str:
    """What a run id argument names: a full run id (``<flow>.<partition>.<key>``,
    of ``flow`` when given) parsed, or, with ``flow``, the id a caller chose
    (``run_id=``, ``X-Run-Id``; no dots) as it is: its partition is for the
    engine to find. Raises :class:`InvalidRunId`, saying to pass ``flow=`` for a
    caller-chosen id without it."""
    if flow is not None:
        check_flow_name(flow)
    if isinstance(run_id, str) and "." not in run_id:
        key = check_run_key(run_id)
        if flow is None:
            raise InvalidRunId(
                f"{run_id!r} is not a full run id (<flow>.<partition>.<key>): to name a run "
                "by the id its caller chose, pass the flow too (flow=...)"
            )
        return key
    return RunId.parse(run_id, flow=flow)


# -- events ---------------------------------------------------------------------------


def check_event_name(name: str) -> str:
    if not isinstance(name, str) or not EVENT_NAME_RE.fullmatch(name):
        raise InvalidRunId(
            f"invalid event name {name!r}: use 1-64 characters of [a-z0-9_.-], "
            "starting with a letter or digit"
        )
    return name


def check_event_key(key: str) -> str:
    """An event key: up to 256 characters, none a control character ("" : no key)."""
    if not isinstance(key, str) or not EVENT_KEY_RE.fullmatch(key):
        raise InvalidRunId(
            f"invalid event key {key!r}: a string of at most 256 characters, no control ones"
        )
    return key


def check_event_id(event_id: str) -> str:
    if not isinstance(event_id, str) or not EVENT_ID_RE.fullmatch(event_id):
        raise InvalidRunId(f"invalid event id {event_id!r}: use 1-60 characters of [A-Za-z0-9_-]")
    return event_id


def event_tag(name: str) -> str:
    return f"af:{{ev:{name}}}"


def event_stream(name: str, key: str) -> str:
    """The kept events of ``(name, key)``; every event script is called on it (or on
    :func:`event_fanouts`), which puts it on the name's slot."""
    return f"{event_tag(name)}:s:{key}"


def event_fanouts(name: str) -> str:
    return f"{event_tag(name)}:f"


def event_triggers(name: str) -> str:
    return f"{event_tag(name)}:on"


def waiter_ref(stream: str, uid: str, addr: str) -> str:
    """How an event's waiter names a waiting vertex: its run's stream, run key, address."""
    return f"{stream}\n{uid}\n{addr}"


def parse_waiter_ref(ref: str) -> tuple[str, str, str]:
    stream, uid, addr = ref.split("\n", 2)
    return stream, uid, addr
