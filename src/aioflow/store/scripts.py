"""The Lua scripts every transition goes through, loaded once per connection pool.

Each script works on one ``{flow:partition}`` hash tag: ``KEYS[1]`` is the
stream and every other key derives from its prefix.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from .conn import RedisPyLean
from .topology import Conn, Router

NAMES: tuple[str, ...] = (
    "claim",
    "complete",
    "submit",
    "move",
    "control",
    "lease",
    "trim",
    "handback",
    "submit_many",
    "limit",  # global limits (aioflow/worker/limits.py): limit, rate, wake
    "rate",
    "wake",
    "resolve",  # waits: a resolution message for a waiting vertex (engine/steering.py)
    "ev_send",  # events: keep an event, answer its waiters (engine/events.py)
    "ev_wait",  # events: record a waiter, answer a kept event (engine/events.py)
)
# Scripts whose second application changes nothing: sent again when a connection
# drops with the call in flight (a failover, a restart). (Not rate: it takes a token.)
# (resolve: a second application adds a message the claim's gate drops.)
IDEMPOTENT = frozenset(
    {
        "complete",
        "submit",
        "move",
        "lease",
        "trim",
        "handback",
        "submit_many",
        "limit",
        "wake",
        "resolve",
        "ev_send",  # a repeated event id is answered "dup", its fan-out idempotent
        "ev_wait",
    }
)


# Redis 7+ reads the flags of a script from its first line. A script that declares
# them (by default none: it may write, it touches only the keys of its hash tag) is
# refused whole, before its first command, while Redis is over maxmemory. Without
# the line (compatibility mode, and Redis 6.2, which knows no such line) Redis
# checks memory only at the script's first write that can grow memory, and then
# lets the rest run: refused or not depends on the path a script took, and a
# script may overshoot maxmemory.
SHEBANG = "#!lua\n"
# Scripts that must run at maxmemory: renewing a lease only resets the idle time of
# entries already there (without it every message in flight would be redelivered,
# and counted towards max_deliveries, while Redis is full), and trimming frees memory.
ALLOW_OOM = frozenset({"lease", "trim"})


def shebang(name: str) -> str:
    return "#!lua flags=allow-oom\n" if name in ALLOW_OOM else SHEBANG


def _source(name: str) -> str:
    lua = resources.files("aioflow.store") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


class Scripts:
    """Script sources and their SHA1s; :meth:`call` runs EVALSHA and loads on NOSCRIPT.

    ``source``/``sha`` are the plain scripts (any Redis); ``flagged``/``flagged_sha``
    the same with :data:`SHEBANG`, used where the router found Redis 7+."""

    def __init__(self) -> None:
        self.source = {n: _source(n) for n in NAMES}
        self.sha = {n: _sha(s) for n, s in self.source.items()}
        self.flagged = {n: shebang(n) + s for n, s in self.source.items()}
        self.flagged_sha = {n: _sha(s) for n, s in self.flagged.items()}

    async def call(self, redis: Redis | Conn, name: str, key: str, *args: Any) -> Any:
        # not isinstance(redis, Redis): redis-py's Redis is a Protocol, ~9 us a check
        if not isinstance(redis, (Router, RedisPyLean)):
            try:
                return await redis.evalsha(self.sha[name], 1, key, *args)
            except NoScriptError:
                await redis.script_load(self.source[name])
                return await redis.evalsha(self.sha[name], 1, key, *args)
        idem = name in IDEMPOTENT
        if isinstance(redis, Router) and not redis.started:
            await redis.start()  # finds out the server's version, so which script to send
        if redis.script_flags:
            sha, source = self.flagged_sha[name], self.flagged[name]
        else:
            sha, source = self.sha[name], self.source[name]
        try:
            return await redis.evalsha(sha, 1, key, *args, idempotent=idem)
        except NoScriptError:
            await redis.script_load(source)
            return await redis.evalsha(sha, 1, key, *args, idempotent=idem)


SCRIPTS = Scripts()
