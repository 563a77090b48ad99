"""Self-attention with grouped KV heads, optional QK-norm, RoPE and a paged KV cache."""

from __future__ import annotations

import torch
from torch import nn

from backends import fused_ops

from backends.attention_metadata import AttentionMetadata
from backends.model_config import ModelConfig
from backends.models.layers import RMSNorm, RotaryEmbedding, WeightSource
from backends.paged_attention import attend_cached, paged_attention


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int, weights: WeightSource,
                 rope: RotaryEmbedding, qk_norm: bool, sliding_window: int | None) -> None:
        super().__init__()
        prefix = f"blk.{layer_index}."
        # Q, K and V in one projection: one weight pass per token instead of three calls.
        self.qkv_proj = weights.linears([prefix + "attn_q", prefix + "attn_k", prefix + "attn_v"])
        self.o_proj = weights.linear(prefix + "attn_output")
        self.q_norm = RMSNorm(weights.vector(prefix + "attn_q_norm"), config.rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(weights.vector(prefix + "attn_k_norm"), config.rms_norm_eps) if qk_norm else None
        self.rope = rope
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.scale = config.attention_scale if config.attention_scale is not None else config.head_dim ** -0.5
        self.sliding_window = sliding_window
        self.fused = fused_ops.available()

    def forward(self, x: torch.Tensor, meta: AttentionMetadata,
                kv_cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        num_tokens = x.shape[0]
        qkv = self.qkv_proj(x).view(num_tokens, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        if self.fused and qkv.is_contiguous() and qkv.dtype == kv_cache[0].dtype:
            # QK-norm, RoPE and the K/V writes in one call; then attention over the cache.
            fused_ops.rope_write_kv_(
                qkv, meta.positions, self.rope.cos, self.rope.sin,
                None if self.q_norm is None else self.q_norm.weight,
                None if self.k_norm is None else self.k_norm.weight,
                self.q_norm.eps if self.q_norm is not None else 0.0,
                kv_cache[0], kv_cache[1], meta.write_blocks, meta.write_offsets, self.num_heads, self.num_kv_heads)
            out = attend_cached(qkv[:, : self.num_heads], kv_cache[0], kv_cache[1], meta, self.scale,
                                self.sliding_window, fused=True)
            return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))
        q = qkv[:, : self.num_heads]
        k = qkv[:, self.num_heads: self.num_heads + self.num_kv_heads]
        v = qkv[:, self.num_heads + self.num_kv_heads:]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        tables = meta.memo((id(self.rope), x.dtype), lambda: self.rope.tables(meta.positions, x.dtype))
        q = self.rope(q, meta.positions, tables)
        k = self.rope(k, meta.positions, tables)
        out = paged_attention(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale, self.sliding_window)
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))
