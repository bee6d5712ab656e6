"""compose.yaml cannot rot: its commands run as written, outside containers.

No Docker daemon runs here, so the test reads compose.yaml, interpolates it as
``docker compose`` would (with a Redis password set), runs the redis service's
command (plus a loopback port and a data dir) and the gateway's and worker's
commands with their environment, where only the addresses change: the other
services' host names become loopback, published ports free ones.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ResponseError

from aioflow.store.redis_server import find_redis_server, free_port
from tests.helpers import wait_until
from tests.otlp_receiver import Receiver
from tests.procs import ROOT, Procs, clean_env

PASSWORD = "s3cret-pass"
VAR = re.compile(r"\$\$|\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``$$`` in every string of ``value``."""
    if isinstance(value, str):
        return VAR.sub(
            lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1)) or m.group(2) or "",
            value,
        )
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services: dict[str, Any] = interpolate(doc, {"REDIS_PASSWORD": PASSWORD})["services"]
    return services


def test_files_agree(compose: dict[str, Any]) -> None:
    """The image runs what compose names; Prometheus scrapes where the services listen."""
    assert set(compose) == {"redis", "gateway", "worker", "jaeger", "prometheus"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "WORKDIR /app" in dockerfile and "COPY examples ./examples" in dockerfile
    assert 'pip install ".[otlp]"' in dockerfile
    for name in ("gateway", "worker"):
        assert compose[name]["build"] == "." and compose[name]["image"] == "aioflow:local"
        assert "examples/hello.py:app" in compose[name]["command"]
        assert "ports" not in compose["worker"], "a published port would forbid --scale"
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    gw_port = compose["gateway"]["environment"]["AIOFLOW_PORT"]
    assert jobs["aioflow-gateway"]["static_configs"][0]["targets"] == [f"gateway:{gw_port}"]
    dns = jobs["aioflow-worker"]["dns_sd_configs"][0]
    assert dns["names"] == ["worker"]
    assert str(dns["port"]) == compose["worker"]["environment"]["AIOFLOW_METRICS_PORT"]
    mount = "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert mount in compose["prometheus"]["volumes"]
    jaeger = compose["jaeger"]
    assert "16686:16686" in jaeger["ports"]
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def _aioflow_argv(command: list[str]) -> list[str]:
    assert command[0] == "aioflow"
    return [str(Path(sys.executable).parent / "aioflow"), *command[1:]]


def _local(
    env: dict[str, str], redis_port: int, otlp_port: int, ports: dict[str, int]
) -> dict[str, str]:
    """The service's environment with container addresses made loopback ones."""
    out = {}
    for k, v in env.items():
        v = v.replace("@redis:6379/", f"@127.0.0.1:{redis_port}/")
        v = v.replace("http://jaeger:4318", f"http://127.0.0.1:{otlp_port}")
        if k == "AIOFLOW_HOST":
            assert v == "0.0.0.0"
            v = "127.0.0.1"
        if k in ports:
            v = str(ports[k])
        out[k] = v
    return out


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    try:
        async with http.get(url) as resp:
            return resp.status, await resp.text()
    except aiohttp.ClientError:
        return 0, ""


@pytest.mark.slow
async def test_compose_commands_start(
    compose: dict[str, Any], procs: Procs, tmp_path: Path, receiver: tuple[Receiver, int]
) -> None:
    rec, otlp_port = receiver
    # redis: its command as written, on a loopback port and a data dir of the test
    rport = free_port()
    cmd = compose["redis"]["command"]
    assert cmd[0] == "redis-server"
    data = tmp_path / "redis-data"
    data.mkdir()
    extra = ["--port", str(rport), "--bind", "127.0.0.1", "--dir", str(data), "--save", ""]
    procs.start("redis", [find_redis_server(), *cmd[1:], *extra], clean_env())
    # gateway and worker: their commands as written, started at once (as compose does;
    # they wait for Redis with a backoff)
    gw_port, m_port = free_port(), free_port()
    ports = {"AIOFLOW_PORT": gw_port, "AIOFLOW_METRICS_PORT": m_port}
    for name in ("gateway", "worker"):
        svc = compose[name]
        assert svc["environment"]["AIOFLOW_REDIS_URL"] == f"redis://:{PASSWORD}@redis:6379/0"
        env = clean_env(_local(svc["environment"], rport, otlp_port, ports))
        procs.start(name, _aioflow_argv(svc["command"]), env)
    url = f"redis://:{PASSWORD}@127.0.0.1:{rport}/0"
    redis = Redis.from_url(url)
    try:
        await wait_until(lambda: _listens(rport), timeout=10, what="redis up")
        cfg = {str(k): str(v) for k, v in (await redis.config_get("*")).items()}
        assert cfg["appendonly"] == "yes" and cfg["appendfsync"] == "everysec"
        assert cfg["maxmemory-policy"] == "noeviction"
        anonymous = Redis(port=rport)
        with pytest.raises((AuthenticationError, ResponseError)):
            await anonymous.ping()
        await anonymous.aclose()
        # its healthcheck, through a shell as compose runs CMD-SHELL
        check = compose["redis"]["healthcheck"]["test"]
        assert check[0] == "CMD-SHELL"
        shell_cmd = check[1].replace("redis-cli", f"redis-cli -p {rport}")
        sh_env = clean_env(compose["redis"]["environment"])
        sh = await asyncio.create_subprocess_exec("sh", "-c", shell_cmd, env=sh_env)
        assert await asyncio.wait_for(sh.wait(), 10) == 0

        base = f"http://127.0.0.1:{gw_port}"
        metrics = f"http://127.0.0.1:{m_port}/metrics"
        async with aiohttp.ClientSession() as http:
            await wait_until(
                lambda: _status(http, f"{base}/healthz"), timeout=30, what="gateway /healthz"
            )
            await wait_until(lambda: _status(http, metrics), timeout=30, what="worker /metrics")
            _, flows = await _get(http, f"{base}/flows")
            assert '"hello"' in flows
            async with http.post(f"{base}/flow/hello?wait=10", json={"name": "compose"}) as resp:
                assert resp.status == 200, await resp.text()
                assert await resp.json() == {"message": "HELLO, COMPOSE!"}
            _, text = await _get(http, metrics)
            shout = 'flow="hello",outcome="completed",vertex="shout"'
            assert f"aioflow_vertex_executions_total{{{shout}}} 1.0" in text
            _, text = await _get(http, f"{base}/metrics")
            assert 'aioflow_runs_submitted_total{flow="hello"} 1.0' in text
        procs.check_alive()
        # the worker's healthcheck is its command plus --health (run by test_health.py)
        health = compose["worker"]["healthcheck"]["test"]
        assert health == ["CMD", *compose["worker"]["command"], "--health"]
        await asyncio.to_thread(procs.terminate, ["gateway", "worker"])
    finally:
        await redis.aclose()
    # traces went where OTEL_EXPORTER_OTLP_ENDPOINT says, named after each role
    assert {sp.service for sp in rec.spans} == {"aioflow-gateway", "aioflow-worker"}


async def _listens(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def _status(http: aiohttp.ClientSession, url: str) -> bool:
    status, _ = await _get(http, url)
    return status == 200
