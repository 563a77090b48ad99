"""The Llama family: SmolLM2, Llama 2/3, Qwen2 (q/k/v biases). GQA, RoPE, RMSNorm, SwiGLU."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backends.attention_metadata import AttentionMetadata
from backends.gguf_file import GGUFFile
from backends.model_config import ModelConfig
from backends.models.attention import Attention
from backends.models.layers import GatedMLP, RMSNorm, RotaryEmbedding, WeightSource

GGUF_ARCHITECTURES = ("llama", "qwen2")
HF_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")

# GGUF tensor name (blk.{i} stands for every layer) -> Hugging Face checkpoint name.
HF_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def config_from_gguf(f: GGUFFile) -> ModelConfig:
    num_heads = int(f.require("attention.head_count"))
    hidden = int(f.require("embedding_length"))
    vocab = f.arch_key("vocab_size") or len(f.metadata.get("tokenizer.ggml.tokens", []))
    return ModelConfig(
        architecture="llama",
        num_layers=int(f.require("block_count")),
        hidden_size=hidden,
        intermediate_size=int(f.require("feed_forward_length")),
        num_heads=num_heads,
        num_kv_heads=int(f.arch_key("attention.head_count_kv", num_heads)),
        head_dim=int(f.arch_key("attention.key_length", hidden // num_heads)),
        vocab_size=int(vocab),
        max_position_embeddings=int(f.require("context_length")),
        rms_norm_eps=float(f.require("attention.layer_norm_rms_epsilon")),
        rope_theta=float(f.arch_key("rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in f.tensors,
        attention_bias="blk.0.attn_q.bias" in f.tensors,
    )


def hf_rope_theta(cfg: dict[str, Any]) -> float:
    """RoPE base frequency of a HF config; transformers >= 5 keeps it (and the scaling type) in
    rope_parameters, older versions in rope_theta and rope_scaling. Only the default RoPE runs."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type"))
    if kind not in (None, "default"):
        raise ValueError(f"RoPE scaling {params} is not supported for the Llama family yet (only the default RoPE)")
    return float(cfg.get("rope_theta") or params.get("rope_theta") or 10000.0)


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    hidden = int(cfg["hidden_size"])
    num_heads = int(cfg["num_attention_heads"])
    theta = hf_rope_theta(cfg)
    return ModelConfig(
        architecture="llama",
        num_layers=int(cfg["num_hidden_layers"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_heads=num_heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
        head_dim=int(cfg.get("head_dim") or hidden // num_heads),
        vocab_size=int(cfg["vocab_size"]),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
    )


def gguf_row_order(name: str, num_rows: int, config: ModelConfig) -> torch.Tensor | None:
    """Row permutation that undoes llama.cpp's Q/K interleaving, or None for other tensors.

    llama.cpp's converter reorders each head's Q/K rows so that its RoPE can rotate adjacent
    pairs; we rotate halves (as HF does), so those rows are put back in the original order.
    """
    if name.endswith("attn_q.weight") or name.endswith("attn_q.bias"):
        heads = config.num_heads
    elif name.endswith("attn_k.weight") or name.endswith("attn_k.bias"):
        heads = config.num_kv_heads
    else:
        return None
    half = num_rows // heads // 2
    # Stored row (h, j, pair) came from original row (h, pair, j); invert that swap.
    return torch.arange(num_rows).view(heads, half, 2).transpose(1, 2).reshape(-1)


class LlamaLayer(nn.Module):
    def __init__(self, config: ModelConfig, i: int, weights: WeightSource, rope: RotaryEmbedding) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.attn_norm = RMSNorm(weights.vector(f"blk.{i}.attn_norm"), eps)
        self.attn = Attention(config, i, weights, rope, qk_norm=False, sliding_window=None)
        self.ffn_norm = RMSNorm(weights.vector(f"blk.{i}.ffn_norm"), eps)
        self.mlp = GatedMLP(weights.linears([f"blk.{i}.ffn_gate", f"blk.{i}.ffn_up"]),
                            weights.linear(f"blk.{i}.ffn_down"), config.intermediate_size, F.silu)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata, kv_cache) -> torch.Tensor:
        # x is updated in place: the residual stream is this step's own tensor.
        h = self.ffn_norm.add_(x, self.attn(self.attn_norm(x), meta, kv_cache))
        return x.add_(self.mlp(h))


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, weights: WeightSource, max_positions: int) -> None:
        super().__init__()
        self.config = config
        rope = RotaryEmbedding(config.head_dim, config.rope_theta, max_positions)
        self.embed = weights.embedding("token_embd")
        self.layers = nn.ModuleList(LlamaLayer(config, i, weights, rope) for i in range(config.num_layers))
        self.norm = RMSNorm(weights.vector("output_norm"), config.rms_norm_eps)
        self.lm_head = weights.linear("output" if weights.has("output") else "token_embd")

    def forward(self, input_ids: torch.Tensor, meta: AttentionMetadata, kv_caches) -> torch.Tensor:
        """Hidden states [T, hidden] of the flat batch `input_ids` [T]."""
        x = self.embed(input_ids)
        for layer, kv in zip(self.layers, kv_caches):
            x = layer(x, meta, kv)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
