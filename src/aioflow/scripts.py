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
    "limit",  # global limits (aioflow/limits.py): limit, rate, wake
    "rate",
    "wake",
)
# Scripts whose second application changes nothing: sent again when a connection
# drops with the call in flight (a failover, a restart). (Not rate: it takes a token.)
IDEMPOTENT = frozenset(
    {"complete", "submit", "move", "lease", "trim", "handback", "submit_many", "limit", "wake"}
)


def _source(name: str) -> str:
    lua = resources.files("aioflow") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


class Scripts:
    """Script sources and their SHA1s; :meth:`call` runs EVALSHA and loads on NOSCRIPT."""

    def __init__(self) -> None:
        self.source = {n: _source(n) for n in NAMES}
        self.sha = {n: hashlib.sha1(s.encode()).hexdigest() for n, s in self.source.items()}

    async def call(self, redis: Redis | Conn, name: str, key: str, *args: Any) -> Any:
        # not isinstance(redis, Redis): redis-py's Redis is a Protocol, ~9 us a check
        if not isinstance(redis, (Router, RedisPyLean)):
            try:
                return await redis.evalsha(self.sha[name], 1, key, *args)
            except NoScriptError:
                await redis.script_load(self.source[name])
                return await redis.evalsha(self.sha[name], 1, key, *args)
        idem = name in IDEMPOTENT
        try:
            return await redis.evalsha(self.sha[name], 1, key, *args, idempotent=idem)
        except NoScriptError:
            await redis.script_load(self.source[name])
            return await redis.evalsha(self.sha[name], 1, key, *args, idempotent=idem)


SCRIPTS = Scripts()
