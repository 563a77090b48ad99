"""Gateway configuration: frozen dataclasses, loaded from a TOML or YAML file.

    host = "127.0.0.1"
    port = 50051
    default_backend = "smollm2-135m"      # optional; default = the first backend
    kv_cache_bytes = 1073741824           # optional; the KV pool every backend shares

    [[backends]]
    name = "smollm2-135m"
    model = "bundled:smollm2-135m"        # or a .gguf path, or a Hugging Face safetensors folder
    engine = "full_precision"
    dtype = "bfloat16"                    # float32 | bfloat16
    max_model_len = 2048
    cost = 1.0                            # relative cost the router weighs (> 0); default: the router file's

    router = "router/default.router"     # optional; requests with no backend are routed
    api_keys = ["key-1", "key-2"]         # optional; clients send `authorization: Bearer <key>`
    max_pending_requests = 1024           # requests in flight (queued + running); more = RESOURCE_EXHAUSTED
    metrics_port = 9090                   # optional; Prometheus /metrics on host:metrics_port
    redis_url = "redis://127.0.0.1:6379/0"  # optional; the shared KV tier; also redis_ttl_seconds, ...

A backend table takes every field of backends.engine_config.EngineConfig (max_num_batched_tokens,
max_num_seqs, enable_prefix_caching, ...); the engine validates them. A backend with
``engine = "litellm"`` takes the keys of gateway.litellm_config.LiteLLMConfig instead. The same keys
work in YAML (``backends:`` a list of mappings). No file means ``GatewayConfig()``: the two
bundled models and the default router file (when it exists). Every problem is a ValueError that names the offending key.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from backends.engine_config import EngineConfig
from backends.kv_tier_config import KVTierConfig
from gateway.litellm_config import LITELLM_ENGINE, LiteLLMConfig

ROOT = Path(__file__).resolve().parent.parent
# Trained for DEFAULT_BACKENDS; package data of `router`, so installed copies find it too.
DEFAULT_ROUTER = ROOT / "router" / "default.router"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # typed by clients; a health service name


@dataclass(frozen=True)
class BackendConfig:
    """One named backend: what serves it (an in-process engine or LiteLLM) and its routing cost."""

    engine: EngineConfig | LiteLLMConfig  # name, model, engine kind and the kind's own settings
    cost: float | None = None  # relative cost per request the router weighs (> 0); None = the router file's

    def __post_init__(self) -> None:
        if self.cost is not None and (isinstance(self.cost, bool) or not isinstance(self.cost, (int, float))
                                      or not 0 < self.cost < float("inf")):
            raise ValueError(f"backend {self.engine.name!r}: cost must be a number > 0, got {self.cost!r}")
        if not _NAME_RE.match(self.engine.name):
            raise ValueError(
                f"name must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or "
                f"digit), got {self.engine.name!r}"
            )

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def model(self) -> str:
        return self.engine.model

    @property
    def is_local(self) -> bool:
        """Whether an in-process engine serves it (else LiteLLM forwards it)."""
        return isinstance(self.engine, EngineConfig)

    @classmethod
    def of(cls, name: str, model: str, cost: float | None = None, **engine_fields: Any) -> BackendConfig:
        kind = LiteLLMConfig if engine_fields.get("engine") == LITELLM_ENGINE else EngineConfig
        return cls(kind(name=name, model=model, **engine_fields), cost)


DEFAULT_BACKENDS = (
    BackendConfig.of("gemma3-270m", "bundled:gemma3-270m"),
    BackendConfig.of("smollm2-135m", "bundled:smollm2-135m"),
)


@dataclass(frozen=True)
class GatewayConfig:
    """Everything `routegate serve` needs."""

    host: str = "127.0.0.1"  # interface to listen on; "0.0.0.0" for all
    port: int = 50051  # 0 = any free port (the server reports the one it bound)
    backends: tuple[BackendConfig, ...] = field(default_factory=lambda: DEFAULT_BACKENDS)
    default_backend: str = ""  # serves requests with an empty `backend`; "" = the first one
    kv_cache_bytes: int | None = None  # the KV pool all backends share; None = the loader's default
    grace_period_s: float = 10.0  # on SIGTERM, how long in-flight requests may take to finish
    router: str | None = None  # router file; None = DEFAULT_ROUTER for DEFAULT_BACKENDS if present; "" = none
    api_keys: tuple[str, ...] = ()  # accepted `authorization: Bearer <key>` keys; () = no auth
    max_pending_requests: int = 1024  # requests in flight (queued + running) before RESOURCE_EXHAUSTED
    metrics_port: int | None = None  # Prometheus endpoint on host:metrics_port; None = off, 0 = any
    # The Redis KV tier behind the prefix cache (backends/kv_tier.py); no URL = off.
    redis_url: str = ""  # redis://host:port/db
    redis_ttl_seconds: int = 86400  # a stored block expires this long after its last write
    redis_kv_dtype: str = "bfloat16"  # stored K/V: bfloat16 | float16
    redis_queue_blocks: int = 64  # write-behind queue; blocks beyond it are dropped, not waited for
    redis_max_fetch_bytes: int = 64 << 20  # bytes of blocks one request may fetch at most
    redis_timeout_s: float = 0.5  # socket timeout of each Redis call; slower = degraded, recompute

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.kv_cache_bytes is not None and self.kv_cache_bytes < 1:
            raise ValueError(f"kv_cache_bytes must be >= 1, got {self.kv_cache_bytes}")
        if self.grace_period_s < 0:
            raise ValueError(f"grace_period_s must be >= 0, got {self.grace_period_s}")
        object.__setattr__(self, "backends", tuple(self.backends))
        self._check_serving_keys()
        self.kv_tier  # noqa: B018 - validates the redis_* keys (errors name them)
        if not self.backends:
            raise ValueError("backends must list at least one backend")
        names = [b.name for b in self.backends]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"backends: duplicate name(s) {', '.join(duplicates)}")
        if not self.default_backend:
            object.__setattr__(self, "default_backend", names[0])
        elif self.default_backend not in names:
            raise ValueError(
                f"default_backend {self.default_backend!r} is not one of the backends: {', '.join(names)}"
            )

    def _check_serving_keys(self) -> None:
        if isinstance(self.api_keys, str) or not all(isinstance(k, str) and k for k in self.api_keys):
            raise ValueError("api_keys must be a list of non-empty strings")
        object.__setattr__(self, "api_keys", tuple(self.api_keys))
        if self.max_pending_requests < 1:
            raise ValueError(f"max_pending_requests must be >= 1, got {self.max_pending_requests}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in [0, 65535], got {self.metrics_port}")
        if self.router is None:
            default = self.backends == DEFAULT_BACKENDS and DEFAULT_ROUTER.is_file()
            object.__setattr__(self, "router", str(DEFAULT_ROUTER) if default else "")
        elif self.router and not Path(self.router).is_file():
            raise ValueError(f"router file {self.router!r} does not exist")

    @property
    def kv_tier(self) -> KVTierConfig:
        """The redis_* keys as the loader's KV tier config."""
        return KVTierConfig(self.redis_url, self.redis_ttl_seconds, self.redis_kv_dtype, self.redis_queue_blocks,
                            self.redis_max_fetch_bytes, self.redis_timeout_s)

    def with_overrides(self, host: str | None = None, port: int | None = None) -> GatewayConfig:
        """A copy with the command line's --host/--port, which win over the file."""
        changes = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
        return replace(self, **changes)


def load_config(path: str | Path) -> GatewayConfig:
    """Read a .toml, .yaml or .yml file into a validated GatewayConfig."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: invalid TOML: {exc}") from exc
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: invalid YAML: {exc}") from exc
    else:
        raise ValueError(f"{path}: config file must end in .toml, .yaml or .yml")
    try:
        return config_from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def config_from_dict(data: Any) -> GatewayConfig:
    """Build a GatewayConfig from parsed TOML/YAML, naming the key of the first problem."""
    _check_table(data, GatewayConfig, where="", exclude=("backends",))
    kwargs = dict(data)
    if "api_keys" in data and not isinstance(data["api_keys"], list):
        raise ValueError("api_keys must be a list of strings")
    if "backends" in data:
        if not isinstance(data["backends"], list):
            raise ValueError("backends must be a list of tables ([[backends]] in TOML)")
        kwargs["backends"] = tuple(_backend_from_dict(i, raw) for i, raw in enumerate(data["backends"]))
    return GatewayConfig(**kwargs)


def _backend_from_dict(index: int, raw: Any) -> BackendConfig:
    where = f"backends[{index}]."
    kind = LiteLLMConfig if isinstance(raw, dict) and raw.get("engine") == LITELLM_ENGINE else EngineConfig
    _check_table(raw, kind, where=where, extra={"cost": "float"})
    for key in ("name", "model"):
        if key not in raw:
            raise ValueError(f"{where}{key} is required")
    fields_ = {k: v for k, v in raw.items() if k != "cost"}
    try:
        return BackendConfig(kind(**fields_), raw.get("cost"))
    except ValueError as exc:
        raise ValueError(f"backends[{index}] ({raw['name']!r}): {exc}") from exc


# Annotation (a string, under `from __future__ import annotations`) -> accepted Python types.
_SCALAR_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "int | None": (int, type(None)),
    "str | None": (str, type(None)),
}


def _check_table(data: Any, cls: type, where: str, exclude: tuple[str, ...] = (),
                 extra: dict[str, str] | None = None) -> None:
    """Reject a non-mapping, unknown keys, and scalars of the wrong type, naming the key."""
    if not isinstance(data, dict):
        name = where.rstrip(".") or "the config"
        raise ValueError(f"{name} must be a table/mapping, got {type(data).__name__}")
    types = {f.name: f.type for f in fields(cls)} | (extra or {})
    unknown = sorted(str(k) for k in data if k not in types)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(where + k for k in unknown)}; known: {', '.join(sorted(types))}"
        )
    for key, value in data.items():
        accepted = _SCALAR_TYPES.get(str(types[key]))
        if key in exclude or accepted is None:
            continue
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
            raise ValueError(f"{where}{key} must be of type {types[key]}, got {value!r}")
