"""Configuration of one in-process engine (one backend)."""

from __future__ import annotations

from dataclasses import dataclass

ENGINE_KINDS = ("full_precision", "kquant")  # kquant: GGUF block formats kept in memory (GGUF only)
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class EngineConfig:
    name: str  # backend name clients use, e.g. "smollm2-135m"
    model: str  # "bundled:<name>", a .gguf file, or a HF safetensors directory
    engine: str = "full_precision"  # which engine runs it
    dtype: str = "float32"  # full_precision: weights and activations; kquant: activations and KV
    max_model_len: int = 2048  # prompt + completion tokens; capped at the model's context
    max_num_batched_tokens: int = 512  # tokens per engine step (prefill chunks + decodes)
    max_num_seqs: int = 64  # sequences per engine step
    enable_prefix_caching: bool = True  # reuse KV blocks of identical prompt prefixes

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("engine name must not be empty")
        if not self.model:
            raise ValueError(f"backend {self.name!r}: model must not be empty")
        if self.engine not in ENGINE_KINDS:
            raise ValueError(f"backend {self.name!r}: engine must be one of {ENGINE_KINDS}, got {self.engine!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"backend {self.name!r}: dtype must be one of {DTYPES}, got {self.dtype!r}")
        for field in ("max_model_len", "max_num_batched_tokens", "max_num_seqs"):
            if getattr(self, field) < 1:
                raise ValueError(f"backend {self.name!r}: {field} must be >= 1, got {getattr(self, field)}")
