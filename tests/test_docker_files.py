"""What can be checked of docker/ without a Docker engine: the compose file parses and wires
Redis and two health-checked replicas, the image runs the README's `routegate serve` with a
config the gateway accepts, and the health probe the image relies on works against a real
server."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from gateway.config import BackendConfig, GatewayConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = re.sub(r"\\\n", " ", (ROOT / "docker" / "Dockerfile").read_text())  # join continued lines
COMPOSE = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
CONFIG_IN_IMAGE = "/etc/routegate/routegate.toml"


def dockerfile_json(instruction: str) -> list[str]:
    """The exec-form arguments of the last `instruction [...]` line (CMD, or HEALTHCHECK's CMD)."""
    lines = re.findall(rf"^{instruction} (\[.*\])\s*$", DOCKERFILE, flags=re.M)
    return yaml.safe_load(lines[-1])


def test_image_serves_the_readme_command_with_the_docker_config():
    cmd = dockerfile_json("CMD")
    assert cmd == ["routegate", "serve", "--config", CONFIG_IN_IMAGE]
    assert f"COPY docker/routegate.toml {CONFIG_IN_IMAGE}" in DOCKERFILE
    assert "routegate serve" in (ROOT / "README.md").read_text()


def test_image_is_slim_non_root_and_pins_the_same_torch():
    assert re.search(r"^FROM python:3\.\d+-slim\s*$", DOCKERFILE, flags=re.M)
    user = re.findall(r"^USER (\S+)", DOCKERFILE, flags=re.M)
    assert user and user[-1] not in ("root", "0")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "torch==2.13.0" in pyproject["project"]["dependencies"]
    assert "torch==2.13.0" in DOCKERFILE
    for source in re.findall(r"^COPY (?!--from)(\S+) ", DOCKERFILE, flags=re.M):
        assert (ROOT / source).exists(), source


def test_health_checks_use_the_grpc_health_probe():
    assert dockerfile_json("HEALTHCHECK.*CMD") == ["routegate", "health", "--port", "50051"]
    for name in ("gateway-a", "gateway-b"):
        assert COMPOSE["services"][name]["healthcheck"]["test"] == ["CMD", "routegate", "health", "--port", "50051"]


def test_compose_runs_redis_and_two_replicas_sharing_it():
    services = COMPOSE["services"]
    assert set(services) == {"redis", "gateway-a", "gateway-b"}
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    redis_args = services["redis"]["command"]
    assert redis_args[redis_args.index("--maxmemory-policy") + 1] == "allkeys-lru"
    config = load_config(ROOT / "docker" / "routegate.toml")
    assert config.redis_url == "redis://redis:6379/0" and config.host == "0.0.0.0"
    host_ports = []
    for name in ("gateway-a", "gateway-b"):
        service = services[name]
        assert service["command"] == dockerfile_json("CMD")
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
        ports = dict(p.split(":") for p in service["ports"])
        assert {v for v in ports.values()} == {str(config.port), str(config.metrics_port)}
        host_ports.append(ports)
    assert host_ports[0].keys().isdisjoint(host_ports[1].keys())


def test_stop_grace_outlasts_the_drain():
    grace = COMPOSE["services"]["gateway-a"]["stop_grace_period"]
    assert int(grace.rstrip("s")) > load_config(ROOT / "docker" / "routegate.toml").grace_period_s


def test_health_probe_against_a_real_server_and_a_closed_port():
    from gateway.server_thread import ServerThread

    runner = CliRunner()
    config = GatewayConfig(port=0, kv_cache_bytes=16 << 20, router="",
                           backends=(BackendConfig.of("smollm2-135m", "bundled:smollm2-135m"),))
    running = ServerThread(config)
    try:
        running.call(running.server.load_backends())
        ok = runner.invoke(app, shlex.split(f"health --port {running.port}"))
        assert (ok.exit_code, ok.output.strip()) == (0, "SERVING")
        backend = runner.invoke(app, shlex.split(f"health --port {running.port} --service smollm2-135m"))
        assert (backend.exit_code, backend.output.strip()) == (0, "SERVING")
        unknown = runner.invoke(app, shlex.split(f"health --port {running.port} --service nope"))
        assert unknown.exit_code == 1 and unknown.output.startswith("UNREACHABLE (NOT_FOUND)")
    finally:
        running.close()
    closed = runner.invoke(app, shlex.split(f"health --port {running.port} --timeout 1"))
    assert closed.exit_code == 1 and closed.output.startswith("UNREACHABLE")
