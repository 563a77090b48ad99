"""Build engines from EngineConfigs: find the weights, tokenizers and model classes, and cut one
KV pool for all of them."""

from __future__ import annotations

import os
import time

from backends import bundled_models, compiled_extension, models
from backends.checkpoint import Checkpoint, GGUFCheckpoint, open_checkpoint
from backends.dense_weights import DTYPES, DenseWeights
from backends.engine import Engine
from backends.engine_config import EngineConfig
from backends.kquant_weights import KQuantWeights
from backends.kv_pool import KVLayout, KVPool, default_kv_cache_bytes
from backends.kv_tier import KVTier, open_kv_tier
from backends.kv_tier_config import KVTierConfig
from backends.tokenizer import Tokenizer

BUNDLED_PREFIX = "bundled:"
BUNDLED_MODELS = {
    "gemma3-270m": bundled_models.gemma3_270m_gguf_path,
    "smollm2-135m": bundled_models.smollm2_135m_gguf_path,
}


def resolve_model_path(model: str) -> str:
    """A .gguf path or HF directory for `model` ("bundled:<name>" names a packaged model)."""
    if model.startswith(BUNDLED_PREFIX):
        name = model[len(BUNDLED_PREFIX):]
        if name not in BUNDLED_MODELS:
            raise ValueError(f"unknown bundled model {name!r}; bundled: {sorted(BUNDLED_MODELS)}")
        return BUNDLED_MODELS[name]()
    return os.path.expanduser(model)


def load_engines(configs: list[EngineConfig], kv_cache_bytes: int | None = None,
                 kv_tier: KVTierConfig | None = None) -> dict[str, Engine]:
    """Engines by name, all allocating KV blocks from one pool of kv_cache_bytes and sharing one
    KV tier (Redis) when kv_tier names one."""
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"backend names must be unique, got {names}")
    started = time.perf_counter()
    # Every compiled kernel at once (in parallel, when not yet built), not one by one inside
    # model construction or the first request's step.
    compiled_extension.build_all()
    checkpoints = [open_checkpoint(resolve_model_path(c.model)) for c in configs]
    layouts = [KVLayout.of(ck.config, DTYPES[c.dtype]) for c, ck in zip(configs, checkpoints)]
    pool = KVPool(layouts, kv_cache_bytes or default_kv_cache_bytes())
    tier = open_kv_tier(kv_tier)
    engines = {}
    for config, checkpoint, layout in zip(configs, checkpoints, layouts):
        engines[config.name] = _build(config, checkpoint, layout, pool, tier)
        engines[config.name].load_seconds = time.perf_counter() - started
        started = time.perf_counter()
    return engines


def load_engine(config: EngineConfig, kv_cache_bytes: int | None = None) -> Engine:
    """One engine with a pool of its own (tests, benchmarks, the CLI)."""
    return load_engines([config], kv_cache_bytes)[config.name]


def _build(config: EngineConfig, checkpoint: Checkpoint, layout: KVLayout, pool: KVPool,
           tier: KVTier | None) -> Engine:
    if isinstance(checkpoint, GGUFCheckpoint):
        tokenizer = Tokenizer.from_gguf_metadata(checkpoint.file.metadata)
    else:
        tokenizer = Tokenizer.from_pretrained_dir(checkpoint.path)
    if config.engine == "kquant":  # raises ValueError for a checkpoint that is not GGUF
        weights = KQuantWeights(checkpoint, config.dtype)
    else:
        weights = DenseWeights(checkpoint, config.dtype)
    model_class = models.MODEL_CLASSES[checkpoint.config.architecture]
    max_len = min(config.max_model_len, checkpoint.config.max_position_embeddings)
    model = model_class(checkpoint.config, weights, max_positions=max_len).eval()
    return Engine(config, checkpoint.config, model, tokenizer, pool, layout, checkpoint.fingerprint, tier)
