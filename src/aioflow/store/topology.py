"""Where keys live: one Redis or a Redis Cluster, found out from one URL.

This module owns topology and routing; nothing else in aioflow asks whether it
runs on a cluster. :class:`Router` is the per-vertex connection: one lean
connection per master, the slot of each key computed locally (CRC16 of its
hash tag), and the cluster's answers handled here:

- ``MOVED``: the slot map is out of date; take the new owner, refresh, retry.
- ``ASK``: the slot is migrating; send ``ASKING`` and the command to the target.
- ``TRYAGAIN`` / ``CLUSTERDOWN``: back off and retry (a failover in progress).
- a node that cannot be reached: refresh the map from any live node, retry.

On a single server the map has one node that owns every slot, so callers run
the same code either way. Off the hot path aioflow uses redis-py:
:func:`cluster_aware` swaps a plain ``Redis`` for redis-py's ``RedisCluster``
when the server turns out to be a cluster node.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aioflow.core.errors import ConfigError

from .conn import Lean, NotConnected, RedisPyLean, Subscriber
from .endpoint import KEEPALIVE, ssl_context, ssl_options

log = logging.getLogger("aioflow.topology")

SLOTS = 16384
Addr = tuple[str, int]
RedisClient = Redis | RedisCluster

# How long a Redis reply may take before the connection counts as stalled
# (Settings.redis_timeout; the default when a client does not say).
DEFAULT_TIMEOUT = 10.0
# How long an idempotent call keeps retrying through a failover before it gives up,
# by default: two Redis timeouts (Router.failover_timeout).
FAILOVER_TIMEOUT = 2 * DEFAULT_TIMEOUT


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with."""
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ b) & 0xFF]
    return crc


def key_slot(key: str | bytes) -> int:
    """The cluster slot of ``key``: of its ``{hash tag}`` when it has a non-empty one.
    The slot is remembered per tag: every key of a run shares its partition's tag,
    so the few tags of the flows served stand for millions of keys (CRC16 in Python
    costs microseconds, and a cache by key missed on every new run)."""
    # str keys (the common case) are cut without encoding: 0.5 us a call against
    # 1.2 us for encode-then-cut
    if isinstance(key, str):
        start = key.find("{")
        if start >= 0:
            end = key.find("}", start + 1)
            if end > start + 1:
                return _slot_of(key[start + 1 : end])
        return _slot_of(key)
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return _slot_of(key)


@functools.lru_cache(maxsize=4096)
def _slot_of(tag: str | bytes) -> int:
    return crc16(tag.encode() if isinstance(tag, str) else tag) % SLOTS


def command_key(args: tuple[Any, ...]) -> Any:
    """The key a command is routed by, or None for a keyless command."""
    name = args[0].upper() if isinstance(args[0], str) else args[0].decode().upper()
    if name in ("EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO"):
        return args[3] if int(args[2]) > 0 else None
    if name in ("XREADGROUP", "XREAD"):
        for i, a in enumerate(args):
            if isinstance(a, str) and a.upper() == "STREAMS":
                return args[i + 1]
        return None
    if name in ("PING", "INFO", "SCRIPT", "WAIT", "CLUSTER", "CONFIG", "ASKING"):
        return None
    return args[1] if len(args) > 1 else None


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_cluster_info(raw: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in as_text(raw).splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


class Router:
    """The lean, routed connection of the per-vertex path.

    ``execute(*args)`` sends a command to the master owning its key (see
    :func:`command_key`); ``execute_on(addr, *args)`` to one node. ``start()``
    finds out what the seed is; until then the router talks to the seed only.
    ``epoch`` grows each time the slot map changes, so per-master loops (the
    worker's readers) know when to regroup.
    """

    def __init__(self, seed: Lean, *, failover_timeout: float | None = None) -> None:
        self._template = seed
        self.seed: Addr = (seed.host, seed.port)
        # how long an idempotent call keeps retrying through a failover (or a stalled
        # link replaced) before it gives up: two Redis timeouts (20 s by default)
        self.failover_timeout = 2 * seed.timeout if failover_timeout is None else failover_timeout
        self.cluster = False
        self.sharded_pubsub = False  # SSUBSCRIBE/SPUBLISH (Redis 7+)
        self.script_flags = False  # scripts declare their flags (Redis 7+, scripts.py)
        self.epoch = 0
        self._nodes: dict[Addr, Lean] = {self.seed: seed}
        self._slots: list[Addr] = [self.seed] * SLOTS
        self.masters: list[Addr] = [self.seed]
        self._known: list[Addr] = [self.seed]  # every node seen, replicas too
        self._started = False
        self._start_lock = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None

    # -- nodes and slots --------------------------------------------------------------

    def node(self, addr: Addr) -> Lean:
        conn = self._nodes.get(addr)
        if conn is None:
            t = self._template
            conn = Lean(
                addr[0],
                addr[1],
                db=t.db,
                username=t.username,
                password=t.password,
                connect_timeout=t.connect_timeout,
                timeout=t.timeout,
                ssl=t.endpoint.ssl,  # TLS and unix sockets as the seed has them
                path=t.endpoint.path if addr == self.seed else None,
            )
            self._nodes[addr] = conn
        return conn

    def addr_for(self, key: str | bytes) -> Addr:
        if not self.cluster:
            return self.seed
        return self._slots[key_slot(key)]

    def group(self, keys: Iterable[str]) -> dict[Addr, list[str]]:
        """``keys`` grouped by the master that owns them, in the order given."""
        out: dict[Addr, list[str]] = {}
        for k in keys:
            out.setdefault(self.addr_for(k), []).append(k)
        return out

    def read_groups(self, keys: Iterable[str]) -> list[tuple[Addr, list[str]]]:
        """``keys`` split into the groups one command may read together, with the
        node to send each to: all of them on one server; one slot each on a
        cluster (a cluster refuses multi-key commands across slots)."""
        if not self.cluster:
            return [(self.seed, list(keys))]
        by_slot: dict[int, list[str]] = {}
        for k in keys:
            by_slot.setdefault(key_slot(k), []).append(k)
        return [(self._slots[slot], ks) for slot, ks in by_slot.items()]

    def auto_partitions(self, flow: str) -> int:
        """What ``partitions="auto"`` means for ``flow`` here: 1 on a single server;
        on a cluster the fewest partitions that give every master some and none
        more than twice another's share (about one per master up to 4 masters,
        more beyond), else the fewest that reach every master at all. Fewer
        partitions mean bigger batches per script call: more would cost CPU and
        spread nothing further."""
        if not self.cluster:
            return 1
        m = len(self.masters)
        covering = 0
        for n in range(m, 16 * m + 1):
            owned: dict[Addr, int] = {}
            for p in range(n):
                a = self.addr_for(f"{{{flow}:{p}}}")
                owned[a] = owned.get(a, 0) + 1
            if len(owned) < m:
                continue
            covering = covering or n
            if max(owned.values()) <= 2 * min(owned.values()):
                return n
        return covering or 16 * m

    @property
    def started(self) -> bool:
        return self._started

    @property
    def timeout(self) -> float:
        """How long a reply may take (``redis_timeout``)."""
        return self._template.timeout

    def lean_template(self) -> Lean:
        return self._template

    # -- discovery --------------------------------------------------------------------

    async def start(self) -> None:
        """Find out whether the seed is a cluster node and, if so, map its slots."""
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            seed = self.node(self.seed)
            info = parse_cluster_info(await seed.execute("INFO", "server"))
            major = int(info.get("redis_version", "0").split(".")[0] or 0)
            self.sharded_pubsub = self.script_flags = major >= 7
            cinfo = parse_cluster_info(await seed.execute("INFO", "cluster"))
            if cinfo.get("cluster_enabled") == "1":
                self.cluster = True
                await self._load_slots([self.seed])
            self._started = True

    async def _load_slots(self, candidates: list[Addr]) -> None:
        last: Exception | None = None
        for addr in candidates:
            try:
                rows: Any = await self.node(addr).execute("CLUSTER", "SLOTS")
            except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError) as e:
                last = e
                continue
            if not rows:
                last = RedisConnectionError(f"{addr[0]}:{addr[1]} knows no slots yet")
                continue
            slots = list(self._slots)
            masters: list[Addr] = []
            known: list[Addr] = []
            for row in rows:
                start, end = int(row[0]), int(row[1])
                nodes = [(as_text(n[0]) or addr[0], int(n[1])) for n in row[2:]]
                master = nodes[0]
                for s in range(start, end + 1):
                    slots[s] = master
                if master not in masters:
                    masters.append(master)
                known.extend(n for n in nodes if n not in known)
            changed = slots != self._slots
            self._slots = slots
            self.masters = sorted(masters)
            self._known = known + [a for a in self._known if a not in known]
            if changed:
                self.epoch += 1
                log.info("cluster map: %d masters %s", len(self.masters), self.masters)
            return
        raise RedisConnectionError(f"no cluster node answered CLUSTER SLOTS: {last}")

    async def refresh(self) -> None:
        """Reload the slot map from any live node (one refresh at a time)."""
        if not self.cluster:
            return
        task = self._refreshing
        if task is None or task.done():
            candidates = [*self.masters, *self._known, self.seed]
            seen: list[Addr] = []
            for a in candidates:
                if a not in seen:
                    seen.append(a)
            task = asyncio.ensure_future(self._load_slots(seen))
            self._refreshing = task
        await asyncio.shield(task)

    # -- commands ---------------------------------------------------------------------

    async def execute(self, *args: Any, idempotent: bool = False) -> Any:
        """Send a command where its key lives; see the module docstring for what is
        retried. ``idempotent`` calls are also retried when a connection drops
        with the command in flight (for up to ``failover_timeout`` seconds)."""
        if not self.cluster and self._started:
            # one server: nothing to route (the common, per-vertex case)
            try:
                return await self._nodes[self.seed].execute(*args)
            except (RedisConnectionError, OSError):
                if not idempotent:
                    raise
            return await self._routed(self.seed, args, idempotent=True, follow=False)
        if not self._started:
            await self.start()
        key = command_key(args)
        addr = self.addr_for(key) if key is not None else self.masters[0]
        return await self._routed(addr, args, idempotent=idempotent, follow=key is not None)

    async def execute_on(self, addr: Addr, *args: Any) -> Any:
        """Send a command to one node; cluster redirections are raised, not followed."""
        return await self.node(addr).execute(*args)

    async def _routed(
        self, addr: Addr, args: tuple[Any, ...], *, idempotent: bool, follow: bool
    ) -> Any:
        deadline = time.monotonic() + self.failover_timeout
        backoff = 0.02
        asking = False
        while True:
            conn = self.node(addr)
            try:
                if asking:
                    asking = False
                    return (await conn.execute_many([("ASKING",), args]))[1]
                return await conn.execute(*args)
            except ResponseError as e:
                text = str(e)
                if not self.cluster or not follow:
                    raise
                if text.startswith("MOVED "):
                    slot, target = text.split()[1:3]
                    addr = self._parse_addr(target, addr)
                    self._slots[int(slot)] = addr
                    self._schedule_refresh()
                    continue
                if text.startswith("ASK "):
                    addr = self._parse_addr(text.split()[2], addr)
                    asking = True
                    continue
                if not text.startswith(("TRYAGAIN", "CLUSTERDOWN")):
                    raise
                if time.monotonic() + backoff > deadline:
                    raise RedisConnectionError(f"Redis Cluster unavailable: {text}") from e
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                with contextlib.suppress(RedisConnectionError):
                    await self.refresh()
                if follow:
                    addr = self.addr_for(command_key(args))
            except (RedisConnectionError, OSError) as e:
                sent = not isinstance(e, NotConnected)
                if (sent and not idempotent) or time.monotonic() + backoff > deadline:
                    raise
                if not self.cluster and not idempotent:
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                with contextlib.suppress(RedisConnectionError):
                    await self.refresh()
                if follow:
                    addr = self.addr_for(command_key(args))

    def _schedule_refresh(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self.refresh())
            self._refreshing.add_done_callback(_ignore_result)

    @staticmethod
    def _parse_addr(text: str, default: Addr) -> Addr:
        host, _, port = text.rpartition(":")
        return (host or default[0], int(port))

    async def evalsha(self, sha: str, numkeys: int, *args: Any, idempotent: bool = False) -> Any:
        return await self.execute("EVALSHA", sha, numkeys, *args, idempotent=idempotent)

    async def script_load(self, source: str) -> Any:
        """Load a script on every master (a NOSCRIPT can come from any of them)."""
        if not self._started:
            await self.start()
        sha = None
        for addr in self.masters:
            sha = await self.node(addr).execute("SCRIPT", "LOAD", source)
        return sha

    async def aclose(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for conn in self._nodes.values():
            await conn.aclose()


def _ignore_result(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


async def cluster_aware(redis: RedisClient, router: Router) -> RedisClient:
    """``redis`` itself, or a redis-py ``RedisCluster`` on the same nodes and
    credentials when ``router`` found a cluster (redis-py follows MOVED/ASK and
    failovers off the hot path)."""
    await router.start()
    if not router.cluster or isinstance(redis, RedisCluster):
        return redis
    pool = redis.connection_pool
    kw = pool.connection_kwargs
    t = router.lean_template()
    tls: dict[str, Any] = {}
    if pool.connection_class is SSLConnection:
        # the same certificates and checks as the seed's connection (a cluster's
        # nodes answer TLS clients with their TLS ports)
        given = ssl_options(kw)
        tls = {"ssl": True, **{k: v for k, v in given.items() if k in _CLUSTER_SSL_OPTIONS}}
        unknown = sorted(k for k, v in given.items() if v is not None and k not in tls)
        if unknown:
            raise ConfigError(
                f"redis-py's RedisCluster does not take {', '.join(unknown)}: give the "
                "TLS options it knows (ssl_ca_certs, ssl_certfile, ssl_keyfile, ...)"
            )
    cluster = RedisCluster(
        host=t.host,
        port=t.port,
        username=kw.get("username"),
        password=kw.get("password"),
        socket_connect_timeout=kw.get("socket_connect_timeout") or 5,
        socket_timeout=kw.get("socket_timeout") or t.timeout,
        socket_keepalive=True,
        socket_keepalive_options=KEEPALIVE,
        max_connections=getattr(pool, "max_connections", 64),
        # through a failover: the node's replica takes over within seconds
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 8),
        **tls,
    )
    # discover the nodes now: commands racing the discovery fail inside redis-py 8
    # (RuntimeError/AttributeError on connections it closes meanwhile)
    await cluster.initialize()
    return cluster


Conn = Router | RedisPyLean

# what redis-py's RedisCluster takes of a plain client's TLS options
_CLUSTER_SSL_OPTIONS = {
    p for p in inspect.signature(RedisCluster.__init__).parameters if p.startswith("ssl")
}


def lean(redis: RedisClient) -> Conn:
    """The routed lean connection to the server (or cluster) of ``redis``; redis-py
    itself for what :class:`Lean` cannot reach."""
    if isinstance(redis, RedisCluster):
        node = redis.startup_nodes[0]
        kw = redis.connection_kwargs
        tls = ssl_context(kw) if kw.get("connection_class") is SSLConnection else None
        return Router(
            Lean(
                node.host,
                int(node.port),
                username=kw.get("username"),
                password=kw.get("password"),
                timeout=float(kw.get("socket_timeout") or DEFAULT_TIMEOUT),
                ssl=tls,
            )
        )
    seed = Lean.from_redis(redis)
    return Router(seed) if seed is not None else RedisPyLean(redis)


class Subscriptions:
    """Pub/sub channels, each subscribed on the node that owns its slot.

    With Redis 7+ the channels are sharded (SSUBSCRIBE), so a message published
    by a script is delivered by its own shard. When a node goes away, or the
    server says a slot moved (``sunsubscribe``), the map is refreshed and the
    channels are subscribed again where they now live; ``on_event`` then sees a
    second confirmation for them, which is the waiter's cue to check again.
    """

    def __init__(self, router: Router, on_event: Any) -> None:
        self._router = router
        self._on_event = on_event
        self._subs: dict[Addr, Subscriber] = {}
        self._where: dict[str, Addr] = {}
        self._moving: asyncio.Task[None] | None = None
        self._closed = False

    async def subscribe(self, channel: str) -> None:
        await self._router.start()
        if channel not in self._where:
            self._place(channel)

    def _place(self, channel: str) -> None:
        addr = self._router.addr_for(channel)
        sub = self._subs.get(addr)
        if sub is None:
            sub = Subscriber(
                self._router.node(addr),
                self._event,
                sharded=self._router.sharded_pubsub,
                on_down=self._down,
            )
            self._subs[addr] = sub
        self._where[channel] = addr
        sub.subscribe(channel)

    def _event(self, kind: bytes, channel: bytes, data: Any) -> None:
        if kind == b"sunsubscribe" and channel.decode() in self._where:
            # the slot moved to another node (Redis 7 tells its subscribers)
            self._rehome()
            return
        self._on_event(kind, channel, data)

    def _down(self, _: Subscriber) -> None:
        if self._router.cluster:
            self._rehome()

    def _rehome(self) -> None:
        if self._closed or (self._moving is not None and not self._moving.done()):
            return
        self._moving = asyncio.ensure_future(self._move())
        self._moving.add_done_callback(_ignore_result)

    async def _move(self) -> None:
        with contextlib.suppress(RedisConnectionError, OSError):
            await self._router.refresh()
        for channel, addr in list(self._where.items()):
            if self._router.addr_for(channel) != addr:
                old = self._subs.get(addr)
                if old is not None:
                    old.unsubscribe(channel)
                self._place(channel)
        for addr, sub in list(self._subs.items()):
            if not sub.channels:
                del self._subs[addr]
                await sub.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._moving is not None:
            self._moving.cancel()
        for sub in self._subs.values():
            await sub.aclose()


class Backend:
    """What one process talks to Redis with, on one server or a cluster alike:
    ``fast`` (the :class:`Router`) on the per-vertex path and ``redis`` (redis-py,
    a ``RedisCluster`` once :meth:`start` found a cluster) for everything else."""

    def __init__(self, redis: RedisClient) -> None:
        self.given = redis
        self.redis: RedisClient = redis
        self.fast: Conn = lean(redis)
        self._started = False
        self._lock = asyncio.Lock()

    @property
    def cluster(self) -> bool:
        return self.fast.cluster

    async def start(self) -> None:
        """Find out the topology (once; raises Redis connection errors while Redis
        is unreachable, so callers may retry)."""
        if self._started:
            return
        async with self._lock:
            if self._started:
                return
            await self.fast.start()
            if isinstance(self.fast, Router):
                self.redis = await cluster_aware(self.given, self.fast)
            self._started = True

    async def aclose(self) -> None:
        await self.fast.aclose()
        if self.redis is not self.given:
            await self.redis.aclose()
