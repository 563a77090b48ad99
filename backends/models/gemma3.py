"""Gemma 3 text: QK-norm, pre/post norms around attention and FFN, GeGLU, scaled embeddings,
sliding-window layers with their own RoPE base interleaved with global layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from backends.attention_metadata import AttentionMetadata
from backends.gguf_file import GGUFFile
from backends.model_config import ModelConfig
from backends.models.attention import Attention
from backends.models.layers import GatedMLP, RMSNorm, RotaryEmbedding, WeightSource, gelu_tanh

GGUF_ARCHITECTURES = ("gemma3",)
HF_ARCHITECTURES = ("Gemma3ForCausalLM",)

# llama.cpp hard-codes these for gemma3 (they are not in the GGUF metadata).
SLIDING_WINDOW_PATTERN = 6  # every 6th layer attends globally
ROPE_LOCAL_THETA = 10000.0

HF_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.post_attention_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.pre_feedforward_layernorm.weight",
    "blk.{i}.post_ffw_norm.weight": "model.layers.{i}.post_feedforward_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def config_from_gguf(f: GGUFFile) -> ModelConfig:
    num_heads = int(f.require("attention.head_count"))
    head_dim = int(f.require("attention.key_length"))
    scaling = f.arch_key("rope.scaling.type")
    return ModelConfig(
        architecture="gemma3",
        num_layers=int(f.require("block_count")),
        hidden_size=int(f.require("embedding_length")),
        intermediate_size=int(f.require("feed_forward_length")),
        num_heads=num_heads,
        num_kv_heads=int(f.arch_key("attention.head_count_kv", num_heads)),
        head_dim=head_dim,
        vocab_size=len(f.metadata["tokenizer.ggml.tokens"]),
        max_position_embeddings=int(f.require("context_length")),
        rms_norm_eps=float(f.require("attention.layer_norm_rms_epsilon")),
        rope_theta=float(f.arch_key("rope.freq_base", 1_000_000.0)),
        tie_word_embeddings="output.weight" not in f.tensors,
        sliding_window=int(f.require("attention.sliding_window")),
        sliding_window_pattern=SLIDING_WINDOW_PATTERN,
        rope_local_theta=ROPE_LOCAL_THETA,
        rope_scaling_factor=float(f.arch_key("rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0,
        attention_scale=head_dim ** -0.5,
    )


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    cfg = cfg.get("text_config", cfg)
    head_dim = int(cfg.get("head_dim", 256))
    scaling = cfg.get("rope_scaling") or {}
    factor = float(scaling.get("factor", 1.0)) if scaling.get("rope_type", scaling.get("type")) == "linear" else 1.0
    return ModelConfig(
        architecture="gemma3",
        num_layers=int(cfg["num_hidden_layers"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_heads=int(cfg["num_attention_heads"]),
        num_kv_heads=int(cfg.get("num_key_value_heads", 1)),
        head_dim=head_dim,
        vocab_size=int(cfg["vocab_size"]),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(cfg.get("rope_theta", 1_000_000.0)),
        tie_word_embeddings=True,
        sliding_window=int(cfg.get("sliding_window", 512)),
        sliding_window_pattern=int(cfg.get("sliding_window_pattern", SLIDING_WINDOW_PATTERN)),
        rope_local_theta=float(cfg.get("rope_local_base_freq", ROPE_LOCAL_THETA)),
        rope_scaling_factor=factor,
        attention_scale=float(cfg.get("query_pre_attn_scalar", head_dim)) ** -0.5,
    )


def hf_tensor_transform(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """HF stores Gemma norm weights as w in x * (1 + w); we (like GGUF) store 1 + w."""
    return tensor.float() + 1.0 if name.endswith("norm.weight") else tensor


class Gemma3Layer(nn.Module):
    def __init__(self, config: ModelConfig, i: int, weights: WeightSource, rope: RotaryEmbedding,
                 sliding_window: int | None) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        p = f"blk.{i}."
        self.attn_norm = RMSNorm(weights.vector(p + "attn_norm"), eps)
        self.attn = Attention(config, i, weights, rope, qk_norm=True, sliding_window=sliding_window)
        self.post_attn_norm = RMSNorm(weights.vector(p + "post_attention_norm"), eps)
        self.ffn_norm = RMSNorm(weights.vector(p + "ffn_norm"), eps)
        self.mlp = GatedMLP(weights.linears([p + "ffn_gate", p + "ffn_up"]), weights.linear(p + "ffn_down"),
                            config.intermediate_size, gelu_tanh)
        self.post_ffn_norm = RMSNorm(weights.vector(p + "post_ffw_norm"), eps)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata, kv_cache) -> torch.Tensor:
        # x is updated in place: the residual stream is this step's own tensor.
        h = self.ffn_norm.add_(x, self.attn(self.attn_norm(x), meta, kv_cache), self.post_attn_norm)
        return x.add_(self.post_ffn_norm(self.mlp(h)))


class Gemma3Model(nn.Module):
    def __init__(self, config: ModelConfig, weights: WeightSource, max_positions: int) -> None:
        super().__init__()
        self.config = config
        global_rope = RotaryEmbedding(config.head_dim, config.rope_theta, max_positions,
                                      config.rope_scaling_factor)
        local_rope = RotaryEmbedding(config.head_dim, config.rope_local_theta or ROPE_LOCAL_THETA,
                                     max_positions)
        layers = []
        for i in range(config.num_layers):
            sliding = config.is_sliding_layer(i)
            layers.append(Gemma3Layer(config, i, weights, local_rope if sliding else global_rope,
                                      config.sliding_window if sliding else None))
        self.embed = weights.embedding("token_embd")
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(weights.vector("output_norm"), config.rms_norm_eps)
        self.lm_head = weights.linear("output" if weights.has("output") else "token_embd")
        self.embed_scale = config.hidden_size ** 0.5

    def forward(self, input_ids: torch.Tensor, meta: AttentionMetadata, kv_caches) -> torch.Tensor:
        x = self.embed(input_ids)
        # HF rounds the scale to the activation dtype before multiplying; so do we.
        x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        for layer, kv in zip(self.layers, kv_caches):
            x = layer(x, meta, kv)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
