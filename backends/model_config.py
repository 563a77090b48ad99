"""The shape of a decoder-only transformer, read from GGUF metadata or a HF config.json."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelConfig:
    """Everything the model code needs to build layers; one instance per loaded model."""

    architecture: str  # "llama" or "gemma3" (a key of backends.models.ARCHITECTURES)
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int  # the context length the model was trained for
    rms_norm_eps: float
    rope_theta: float  # RoPE base of full-attention layers
    tie_word_embeddings: bool
    # Gemma 3: sliding-window layers use their own RoPE base; every `sliding_window_pattern`-th
    # layer (1-based) attends globally. None/0 means every layer is global.
    sliding_window: int | None = None
    sliding_window_pattern: int = 0
    rope_local_theta: float | None = None
    rope_scaling_factor: float = 1.0  # linear RoPE scaling of global layers (Gemma 3 4B+)
    attention_scale: float | None = None  # None = head_dim ** -0.5
    attention_bias: bool = False  # Qwen2-style q/k/v projection biases
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "intermediate_size", "num_heads",
                     "num_kv_heads", "head_dim", "vocab_size", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")

    def is_sliding_layer(self, layer_index: int) -> bool:
        """True if layer `layer_index` (0-based) attends only within the sliding window."""
        if not self.sliding_window or self.sliding_window_pattern <= 0:
            return False
        return (layer_index + 1) % self.sliding_window_pattern != 0
