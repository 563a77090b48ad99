"""Build an Engine from an EngineConfig: find the weights, the tokenizer and the model class."""

from __future__ import annotations

import os
import time

import torch

from backends import bundled_models, models
from backends.checkpoint import GGUFCheckpoint, open_checkpoint
from backends.dense_weights import DTYPES, DenseWeights
from backends.engine import Engine
from backends.engine_config import EngineConfig
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


def load_engine(config: EngineConfig) -> Engine:
    started = time.perf_counter()
    checkpoint = open_checkpoint(resolve_model_path(config.model))
    if isinstance(checkpoint, GGUFCheckpoint):
        tokenizer = Tokenizer.from_gguf_metadata(checkpoint.file.metadata)
    else:
        tokenizer = Tokenizer.from_pretrained_dir(checkpoint.path)
    weights = DenseWeights(checkpoint, config.dtype)
    model_class = models.MODEL_CLASSES[checkpoint.config.architecture]
    max_len = min(config.max_model_len, checkpoint.config.max_position_embeddings)
    model = model_class(checkpoint.config, weights, max_positions=max_len).eval()
    engine = Engine(config, checkpoint.config, model, tokenizer, kv_dtype=DTYPES[config.dtype])
    engine.checkpoint = checkpoint
    engine.load_seconds = time.perf_counter() - started
    return engine
