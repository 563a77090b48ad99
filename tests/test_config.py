"""Gateway configuration: defaults, TOML/YAML loading, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.config import BackendConfig, GatewayConfig, config_from_dict, load_config

EXAMPLE_TOML = """
host = "0.0.0.0"
port = 6000
default_backend = "small"
grace_period_s = 2.5
kv_cache_bytes = 1048576

[[backends]]
name = "big"
model = "bundled:gemma3-270m"
dtype = "bfloat16"

[[backends]]
name = "small"
model = "bundled:smollm2-135m"
max_model_len = 1024
"""

EXAMPLE_YAML = """
host: 0.0.0.0
port: 6000
default_backend: small
grace_period_s: 2.5
kv_cache_bytes: 1048576
backends:
  - {name: big, model: "bundled:gemma3-270m", dtype: bfloat16}
  - {name: small, model: "bundled:smollm2-135m", max_model_len: 1024}
"""


def test_defaults_are_the_two_bundled_models() -> None:
    config = GatewayConfig()
    assert (config.host, config.port) == ("127.0.0.1", 50051)
    assert [(b.name, b.model) for b in config.backends] == [
        ("gemma3-270m", "bundled:gemma3-270m"),
        ("smollm2-135m", "bundled:smollm2-135m"),
    ]
    assert config.default_backend == "gemma3-270m"


@pytest.mark.parametrize(("suffix", "text"), [(".toml", EXAMPLE_TOML), (".yaml", EXAMPLE_YAML)])
def test_load_file(tmp_path: Path, suffix: str, text: str) -> None:
    path = tmp_path / f"routegate{suffix}"
    path.write_text(text)
    config = load_config(path)
    assert config == GatewayConfig(
        host="0.0.0.0",
        port=6000,
        default_backend="small",
        grace_period_s=2.5,
        kv_cache_bytes=1048576,
        backends=(
            BackendConfig.of("big", "bundled:gemma3-270m", dtype="bfloat16"),
            BackendConfig.of("small", "bundled:smollm2-135m", max_model_len=1024),
        ),
    )
    assert config.backends[1].engine.max_model_len == 1024


def test_overrides_win_over_the_file() -> None:
    config = GatewayConfig(port=6000).with_overrides(host="0.0.0.0", port=None)
    assert (config.host, config.port) == ("0.0.0.0", 6000)


BACKEND = {"name": "b", "model": "bundled:smollm2-135m"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"prot": 1}, "unknown key(s) prot"),
        ({"backends": [{**BACKEND, "dtyp": "float32"}]}, "unknown key(s) backends[0].dtyp"),
        ({"backends": [{"name": "b"}]}, "backends[0].model is required"),
        ({"backends": [{"model": "bundled:smollm2-135m"}]}, "backends[0].name is required"),
        ({"backends": [{**BACKEND, "dtype": "float8"}]}, "dtype"),
        ({"backends": [{**BACKEND, "engine": "magic"}]}, "engine"),
        ({"backends": [{**BACKEND, "max_model_len": 0}]}, "max_model_len"),
        ({"backends": [{**BACKEND, "name": "has space"}]}, "name must be"),
        ({"backends": [BACKEND, BACKEND]}, "duplicate name(s) b"),
        ({"backends": []}, "at least one backend"),
        ({"backends": {"name": "b"}}, "backends must be a list"),
        ({"backends": ["b"]}, "backends[0] must be a table"),
        ({"default_backend": "nope"}, "default_backend 'nope'"),
        ({"port": 70000}, "port must be"),
        ({"port": "50051"}, "port must be of type int"),
        ({"backends": [{**BACKEND, "max_model_len": "2k"}]}, "backends[0].max_model_len must be of type int"),
        ({"host": ""}, "host must not be empty"),
        ({"grace_period_s": -1}, "grace_period_s"),
        ({"kv_cache_bytes": 0}, "kv_cache_bytes must be >= 1"),
        ({"kv_cache_bytes": 1.5}, "kv_cache_bytes must be of type int | None"),
        ([1, 2], "the config must be a table/mapping"),
    ],
)
def test_invalid_config_names_the_key(data: object, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        config_from_dict(data)
    assert message in str(excinfo.value)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ValueError, match=r"must end in \.toml, \.yaml or \.yml"):
        load_config(tmp_path / "c.json")
    (tmp_path / "bad.toml").write_text("port = = 1")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "bad.toml").write_text("prot = 1")
    with pytest.raises(ValueError, match=r"bad\.toml: unknown key\(s\) prot"):
        load_config(tmp_path / "bad.toml")


def test_cli_rejects_a_bad_config_before_starting(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[backends]]\nname = "b"\n')
    result = CliRunner().invoke(app, ["serve", "--config", str(path)])
    assert result.exit_code == 2
    assert "backends[0].model is required" in result.output


SERVING_TOML = """
api_keys = ["k1", "k2"]
max_pending_requests = 8
metrics_port = 9100

[[backends]]
name = "local"
model = "bundled:smollm2-135m"
cost = 1.0

[[backends]]
name = "hosted"
engine = "litellm"
model = "openai/gpt-4o-mini"
api_base = "http://127.0.0.1:8000/v1"
api_key_env = "OPENAI_API_KEY"
cost = 10
"""


def test_serving_keys_and_a_litellm_backend(tmp_path: Path) -> None:
    path = tmp_path / "routegate.toml"
    path.write_text(SERVING_TOML)
    config = load_config(path)
    assert (config.api_keys, config.max_pending_requests, config.metrics_port, config.router) == (
        ("k1", "k2"), 8, 9100, "",
    )
    local, hosted = config.backends
    assert (local.is_local, local.cost, hosted.is_local, hosted.cost) == (True, 1.0, False, 10)
    assert hosted == BackendConfig.of("hosted", "openai/gpt-4o-mini", cost=10, engine="litellm",
                                      api_base="http://127.0.0.1:8000/v1", api_key_env="OPENAI_API_KEY")


def test_router_key(tmp_path: Path) -> None:
    router_file = tmp_path / "r.router"
    router_file.write_bytes(b"x")
    assert config_from_dict({"router": str(router_file)}).router == str(router_file)
    assert config_from_dict({"router": ""}).router == ""  # explicitly off
    # Backends other than the default ones get no default router.
    assert config_from_dict({"backends": [BACKEND]}).router == ""


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"router": "/nonexistent.router"}, "router file '/nonexistent.router' does not exist"),
        ({"api_keys": "k1"}, "api_keys must be a list of strings"),
        ({"api_keys": ["k1", ""]}, "api_keys must be a list of non-empty strings"),
        ({"max_pending_requests": 0}, "max_pending_requests must be >= 1"),
        ({"metrics_port": 70000}, "metrics_port must be in [0, 65535]"),
        ({"metrics_port": "9100"}, "metrics_port must be of type int | None"),
        ({"backends": [{**BACKEND, "cost": 0}]}, "cost must be a number > 0"),
        ({"backends": [{**BACKEND, "cost": "cheap"}]}, "backends[0].cost must be of type float"),
        ({"backends": [{**BACKEND, "engine": "litellm", "dtype": "float32"}]}, "unknown key(s) backends[0].dtype"),
        ({"backends": [{**BACKEND, "engine": "litellm", "timeout_s": 0}]}, "timeout_s must be > 0"),
    ],
)
def test_invalid_serving_keys_name_the_key(data: object, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        config_from_dict(data)
    assert message in str(excinfo.value)
