"""What lets the gateway face a network: signed requests with a replay guard,
scoped bearer tokens, and the address policy for callbacks.

Signature: ``X-Aioflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>." + body)>``. A request is accepted when ``t`` is within the tolerance of
the gateway's clock, one ``v1`` matches one of the secrets, and the same MAC
was never accepted before (a Redis key per accepted MAC, kept until the
signature would be stale anyway).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import ipaddress
import re
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import DefaultResolver
from aiohttp.abc import AbstractResolver, ResolveResult

from .errors import ConfigError, Forbidden, InvalidCallbackUrl, Unauthorized

SIGNATURE_HEADER = "X-Aioflow-Signature"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TS = re.compile(r"^[0-9]{1,12}$")


# -- signatures ---------------------------------------------------------------------


def parse_secrets(value: str | Sequence[str] | None) -> tuple[bytes, ...]:
    """``"new,old"`` (or a sequence) as secrets; the first one signs, all verify."""
    if not value:
        return ()
    parts = value.split(",") if isinstance(value, str) else list(value)
    return tuple(p.strip().encode() for p in parts if p.strip())


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str | bytes, *, timestamp: int | None = None) -> str:
    """The ``X-Aioflow-Signature`` value for ``body``, signed now (or at ``timestamp``)."""
    key = secret.encode() if isinstance(secret, str) else secret
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(key, t, body)}"


@dataclass(frozen=True)
class Signature:
    """A parsed signature header: the timestamp and the ``v1`` MACs it carries."""

    timestamp: int
    macs: tuple[str, ...]
    #: what the replay guard remembers: a digest of what was signed, so that
    #: re-arranging the MACs of a header does not make a new request of it
    replay_id: str = ""

    @classmethod
    def parse(cls, header: str | None) -> Signature:
        """Raises :class:`Unauthorized` (``missing`` or ``malformed``)."""
        if not header:
            raise Unauthorized("missing", f"missing {SIGNATURE_HEADER} header")
        t: int | None = None
        macs: list[str] = []
        for part in header.split(","):
            key, sep, value = part.strip().partition("=")
            if not sep:
                break
            if key == "t" and t is None and _TS.fullmatch(value):
                t = int(value)
            elif key == "v1" and _HEX64.fullmatch(value):
                macs.append(value)
            elif key in ("t", "v1"):
                break
        else:
            if t is not None and macs and len(macs) <= 8:
                return cls(t, tuple(macs))
        raise Unauthorized(
            "malformed", f"malformed {SIGNATURE_HEADER}: expected t=<unix seconds>,v1=<64 hex>"
        )


def verify(
    header: str | None,
    body: bytes,
    secrets: Sequence[bytes],
    *,
    now: float,
    tolerance: float,
) -> Signature:
    """Check ``header`` against ``body``: raises :class:`Unauthorized` with reason
    ``missing``, ``malformed``, ``stale`` or ``bad``; answers the signature."""
    sig = Signature.parse(header)
    if abs(now - sig.timestamp) > tolerance:
        raise Unauthorized(
            "stale",
            f"signature timestamp {sig.timestamp} is more than {tolerance:g}s from the "
            f"server's clock ({int(now)})",
        )
    ok = False
    for secret in secrets:
        want = _mac(secret, sig.timestamp, body).encode()
        for mac in sig.macs:
            ok |= hmac.compare_digest(want, mac.encode())
    if not ok:
        raise Unauthorized("bad", "signature does not match the body with any secret")
    signed = hashlib.sha256(b"%d." % sig.timestamp + body).hexdigest()
    return Signature(sig.timestamp, sig.macs, signed)


class RedisSource(Protocol):
    """What holds the redis-py client (the engine: a ``RedisCluster`` once started)."""

    @property
    def redis(self) -> Any: ...

    async def start(self) -> None: ...


class ReplayGuard:
    """Remembers accepted signatures in Redis (one key each, ``SET NX PX``) until they
    would be stale anyway; a second use of one is refused."""

    def __init__(self, source: RedisSource, *, tolerance: float) -> None:
        self.source = source
        self.tolerance = tolerance

    async def accept(self, sig: Signature, now: float) -> None:
        """Raises :class:`Unauthorized` (``replayed``) for a signature seen before."""
        ttl_ms = max(1, int((sig.timestamp + self.tolerance - now) * 1000) + 1000)
        await self.source.start()
        # one key per signed request, its own hash tag: a single-key command works on a cluster
        first = await self.source.redis.set(f"af:sig:{{{sig.replay_id}}}", b"1", nx=True, px=ttl_ms)
        if not first:
            raise Unauthorized("replayed", "this signature was accepted before: sign again")


# -- bearer tokens ------------------------------------------------------------------


class Scope(enum.IntEnum):
    """What a bearer token may do; each scope implies the ones below it."""

    READ = 1
    RUN = 2
    ADMIN = 3


@dataclass(frozen=True)
class Tokens:
    """The ``api_tokens`` setting: ``"read:TOKEN,run:TOKEN,admin:sha256:<hex>"``.

    Tokens are kept as SHA-256 digests only; ``sha256:<hex>`` gives the digest
    directly so the plain token need not appear in the environment.
    """

    digests: tuple[tuple[bytes, Scope], ...] = ()

    @classmethod
    def parse(cls, spec: str | None) -> Tokens:
        """Raises :class:`ConfigError` naming the bad entry (never the token itself)."""
        out: list[tuple[bytes, Scope]] = []
        for n, entry in enumerate((spec or "").split(","), 1):
            entry = entry.strip()
            if not entry:
                continue
            scope_name, sep, token = entry.partition(":")
            try:
                scope = Scope[scope_name.strip().upper()]
            except KeyError:
                raise ConfigError(
                    f"api_tokens entry {n}: scope must be read, run or admin "
                    f"(format scope:token), got {scope_name.strip()!r}"
                ) from None
            if not sep or not token:
                raise ConfigError(f"api_tokens entry {n}: empty token")
            if token.startswith("sha256:"):
                digest = token.removeprefix("sha256:").lower()
                if not _HEX64.fullmatch(digest):
                    raise ConfigError(f"api_tokens entry {n}: sha256: needs 64 hex digits")
                out.append((bytes.fromhex(digest), scope))
            else:
                out.append((hashlib.sha256(token.encode()).digest(), scope))
        return cls(tuple(out))

    def __bool__(self) -> bool:
        return bool(self.digests)

    def scope_of(self, token: str) -> Scope | None:
        """The strongest scope ``token`` has, None for an unknown token."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: Scope | None = None
        for known, scope in self.digests:
            if hmac.compare_digest(digest, known) and (found is None or scope > found):
                found = scope
        return found

    def check(self, authorization: str | None, need: Scope) -> Scope:
        """The scope of the ``Authorization`` header's bearer token if it is at least
        ``need``; raises :class:`Unauthorized` or :class:`Forbidden`."""
        if not authorization:
            raise Unauthorized("missing", "missing Authorization: Bearer <token>")
        kind, _, token = authorization.partition(" ")
        token = token.strip()
        if kind.lower() != "bearer" or not token:
            raise Unauthorized("malformed", "expected Authorization: Bearer <token>")
        scope = self.scope_of(token)
        if scope is None:
            raise Unauthorized("bad", "unknown bearer token")
        if scope < need:
            raise Forbidden(
                f"this token has the {scope.name.lower()} scope; "
                f"this request needs {need.name.lower()}"
            )
        return scope


# -- callback addresses -------------------------------------------------------------

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPAT = ipaddress.ip_network("::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_problem(address: str | IPAddress) -> str | None:
    """Why a callback must not go to ``address``: ``loopback``, ``private``,
    ``link-local``, ``multicast``, ``unspecified``, ``shared`` (CGNAT) or
    ``reserved``; None for a public address. A pure function: no traffic.

    IPv6 forms that embed an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged
    by the address they embed.
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(ip.packed)
        if ip.ipv4_mapped is not None:
            return address_problem(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            return address_problem(ip.sixtofour)
        if ip in _NAT64:
            return address_problem(ipaddress.IPv4Address(ip.packed[-4:]))
        if ip in _NAT64_LOCAL:
            return "private"
        if ip in _IPV4_COMPAT and not ip.is_unspecified and not ip.is_loopback:
            return "reserved"  # deprecated IPv4-compatible form
        if ip.teredo is not None:
            return "reserved"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "shared"
    if ip.is_private or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


Resolve = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver, 5 s at most)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(5.0):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise OSError("no answer from the resolver in 5 s") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class CallbackPolicy:
    """Which callback URLs are allowed: http(s) only; when ``hosts`` is set, only
    those host names; unless ``allow_private``, only hosts whose every address is
    public (checked at submit and again at delivery)."""

    allow_private: bool = False
    hosts: frozenset[str] | None = None

    @classmethod
    def from_settings(cls, allow_private: bool, hosts: str | None) -> CallbackPolicy:
        names = None
        if hosts:
            names = frozenset(h.strip().lower().rstrip(".") for h in hosts.split(",") if h.strip())
        return cls(allow_private=allow_private, hosts=names)

    async def check(self, url: str, *, resolver: Resolve = resolve) -> None:
        """Raises :class:`InvalidCallbackUrl` saying why ``url`` is refused."""
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = 0
        host = (parts.hostname or "").lower().rstrip(".")
        if parts.scheme not in ("http", "https") or not host or not port or len(url) > 2048:
            raise InvalidCallbackUrl(f"invalid callback URL {url!r}: expected http(s)://host/...")
        if self.hosts is not None and host not in self.hosts:
            raise InvalidCallbackUrl(f"callback host {host!r} is not in callback_hosts")
        if self.allow_private:
            return
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                addresses = await resolver(host, port)
            except OSError as e:
                raise InvalidCallbackUrl(f"callback host {host!r} does not resolve: {e}") from e
        for address in addresses:
            problem = address_problem(address)
            if problem is not None:
                raise InvalidCallbackUrl(
                    f"callback host {host!r} is a {problem} address ({address}); "
                    "set callback_allow_private to allow it"
                )


class PublicResolver(AbstractResolver):
    """An aiohttp resolver that refuses a name resolving to any non-public address,
    so a callback connects only to the addresses it checked (no DNS rebinding
    between the check and the connection)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for r in results:
            problem = address_problem(r["host"])
            if problem is not None:
                raise OSError(f"callback host {host!r} resolves to a {problem} address")
        return results

    async def close(self) -> None:
        await self._inner.close()
