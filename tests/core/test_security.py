"""The pure parts of aioflow.security: signatures, tokens, address classification and
the callback URL policy (no traffic is sent anywhere; names resolve through a stub)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

import aioflow
from aioflow.security import (
    CallbackPolicy,
    PublicResolver,
    Scope,
    Signature,
    Tokens,
    address_problem,
    parse_secrets,
    sign,
    verify,
)

NOW = 1_800_000_000
SECRETS = parse_secrets("new,old")


def test_sign_is_hmac_over_timestamp_dot_body() -> None:
    header = sign(b'{"a":1}', "k", timestamp=NOW)
    mac = hmac.new(b"k", f"{NOW}.".encode() + b'{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={mac}"


def reason(header: str | None, body: bytes = b"x", now: float = NOW) -> str:
    with pytest.raises(aioflow.Unauthorized) as e:
        verify(header, body, SECRETS, now=now, tolerance=300)
    return e.value.reason


def test_verify_reasons() -> None:
    good = sign(b"x", "new", timestamp=NOW)
    assert verify(good, b"x", SECRETS, now=NOW + 300, tolerance=300).timestamp == NOW
    assert reason(None) == reason("") == "missing"
    mac = good.split("v1=")[1]
    for bad in (
        "garbage",
        f"v1={mac}",  # no t
        f"t={NOW}",  # no v1
        f"t=abc,v1={mac}",
        f"t={NOW},v1={mac[:-1]}",
        f"t={NOW},v1={mac.upper()}",
        f"t={NOW},t={NOW},v1={mac}",
        f"t=-{NOW},v1={mac}",
        "t=1,v1=" + "é" * 64,
    ):
        assert reason(bad) == "malformed", bad
    assert reason(good, now=NOW + 301) == "stale"
    assert reason(good, now=NOW - 301) == "stale"
    assert reason(good, body=b"y") == "bad"
    assert reason(sign(b"x", "other", timestamp=NOW)) == "bad"
    # unknown keys are ignored; several v1 (one per secret) are fine
    other = sign(b"x", "other", timestamp=NOW).split("v1=")[1]
    assert verify(f"t={NOW},v0=zz,v1={other},v1={mac}", b"x", SECRETS, now=NOW, tolerance=300)


def test_rotation_accepts_every_secret_and_the_replay_id_ignores_which() -> None:
    a = verify(sign(b"x", "new", timestamp=NOW), b"x", SECRETS, now=NOW, tolerance=300)
    b = verify(sign(b"x", "old", timestamp=NOW), b"x", SECRETS, now=NOW, tolerance=300)
    assert a.replay_id == b.replay_id != ""
    assert Signature.parse(sign(b"x", "new", timestamp=NOW)).replay_id == ""


def test_tokens() -> None:
    digest = hashlib.sha256(b"adm1n").hexdigest()
    tokens = Tokens.parse(f" read:r1 , run:u1,admin:sha256:{digest},read:u1")
    assert tokens.scope_of("r1") is Scope.READ
    assert tokens.scope_of("u1") is Scope.RUN  # the strongest of its entries
    assert tokens.scope_of("adm1n") is Scope.ADMIN
    assert tokens.scope_of("sha256:" + digest) is None  # the digest is no token
    assert tokens.scope_of("nope") is None
    assert not Tokens.parse(None) and not Tokens.parse("") and tokens
    assert tokens.check("Bearer u1", Scope.READ) is Scope.RUN
    with pytest.raises(aioflow.Forbidden):
        tokens.check("Bearer r1", Scope.RUN)
    for header, why in (
        (None, "missing"),
        ("Basic r1", "malformed"),
        ("Bearer", "malformed"),
        ("Bearer zz", "bad"),
    ):
        with pytest.raises(aioflow.Unauthorized) as e:
            tokens.check(header, Scope.READ)
        assert e.value.reason == why
    for bad in ("root:x", "read:", "read", "admin:sha256:12"):
        with pytest.raises(aioflow.ConfigError):
            Tokens.parse(bad)
    with pytest.raises(aioflow.ConfigError):
        aioflow.Settings(api_tokens="boss:x")


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fec0::1", "private"),  # site-local
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "shared"),  # CGNAT
        ("100.127.255.254", "shared"),
        ("240.0.0.1", "private"),
        ("255.255.255.255", "private"),
        ("192.0.2.1", "private"),  # documentation
        ("198.18.0.1", "private"),  # benchmarking
        ("0.1.2.3", "private"),  # "this network"
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b:1::1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        ("::127.0.0.2", "reserved"),  # IPv4-compatible (deprecated)
        ("2001::1", "reserved"),  # Teredo
        ("2001:db8::1", "private"),  # documentation
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("100.128.0.1", None),  # just past CGNAT
        ("172.32.0.1", None),  # just past 172.16/12
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
        ("2002:808:808::", None),  # 6to4 of 8.8.8.8
    ],
)
def test_address_classification(address: str, problem: str | None) -> None:
    assert address_problem(address) == problem


async def test_callback_policy() -> None:
    names = {
        "hooks.example.com": ["93.184.215.14"],
        "evil.example.com": ["8.8.8.8", "10.0.0.5"],
        "metadata.example.com": ["169.254.169.254"],  # a cloud metadata address
    }
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        if host not in names:
            raise OSError("no such name")
        return names[host]

    async def refused(policy: CallbackPolicy, url: str) -> str:
        with pytest.raises(aioflow.InvalidCallbackUrl) as e:
            await policy.check(url, resolver=resolver)
        return str(e.value)

    default = CallbackPolicy()
    await default.check("https://hooks.example.com/x", resolver=resolver)
    await default.check("http://8.8.8.8:8080/x", resolver=resolver)
    assert asked == [("hooks.example.com", 443)]  # IP literals are not resolved
    assert "loopback" in await refused(default, "http://127.0.0.1:9/x")
    assert "loopback" in await refused(default, "http://[::1]/x")
    assert "loopback" in await refused(default, "http://[::ffff:127.0.0.1]/x")
    assert "link-local" in await refused(default, "http://metadata.example.com/latest")
    assert "private" in await refused(default, "http://evil.example.com/")  # any address counts
    assert "does not resolve" in await refused(default, "http://nowhere.example.com/")
    for bad in ("ftp://x/", "http:///x", "http://x:99999/", "javascript:alert(1)", "/x"):
        assert "invalid callback URL" in await refused(default, bad)

    private = CallbackPolicy(allow_private=True)
    await private.check("http://127.0.0.1:9/x", resolver=resolver)
    await private.check("http://localhost:9/x", resolver=resolver)

    listed = CallbackPolicy.from_settings(False, "Hooks.Example.com., other.example.com")
    assert listed.hosts == frozenset({"hooks.example.com", "other.example.com"})
    await listed.check("https://HOOKS.example.com/x", resolver=resolver)
    assert "callback_hosts" in await refused(listed, "https://8.8.8.8/x")
    assert "callback_hosts" in await refused(listed, "https://evil.example.com/x")


def test_settings_from_env() -> None:
    s = aioflow.Settings.from_env(
        {
            "AIOFLOW_HMAC_SECRET": "a,b",
            "AIOFLOW_CALLBACK_ALLOW_PRIVATE": "true",
            "AIOFLOW_EXPOSE_TRACEBACKS": "0",
            "AIOFLOW_MAX_VALUE": "1024",
            "AIOFLOW_SIGNATURE_TOLERANCE": "60",
            "AIOFLOW_API_TOKENS": "read:sekrit",
        }
    )
    assert s.callback_allow_private is True and s.expose_tracebacks is False
    assert s.max_value == 1024 and s.signature_tolerance == 60.0
    assert parse_secrets(s.hmac_secret) == (b"a", b"b")
    assert "sekrit" not in repr(s) and "a,b" not in repr(s)
    with pytest.raises(aioflow.ConfigError):
        aioflow.Settings.from_env({"AIOFLOW_EXPOSE_TRACEBACKS": "maybe"})


async def test_public_resolver_refuses_names_of_loopback_addresses() -> None:
    """What a callback connects through: a name that resolves to loopback (here the
    real resolver's ``localhost``) fails to resolve, so no connection is made."""
    resolver = PublicResolver()
    try:
        with pytest.raises(OSError, match="loopback"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
