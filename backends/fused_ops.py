"""Fused per-layer operations of the model step (fused_ops.cpp), built on first use.

    from backends import fused_ops
    if fused_ops.available():
        h = fused_ops.add_rms_norm_(x, delta, None, weight, eps)  # x += delta; h = rms_norm(x)

Each call does the work of several torch ops: at batch 1 a step's cost was mostly the fixed
cost of ~50 small ops per layer. The models keep their plain torch paths (used when the
extension cannot be built, or with ROUTEGATE_NO_KERNELS=1); tests compare both.
"""

from __future__ import annotations

import os

import torch

from backends.compiled_extension import CompiledExtension

_EXTENSION = CompiledExtension("routegate_fused_ops", [os.path.join(os.path.dirname(__file__), "fused_ops.cpp")])


def available() -> bool:
    """True when the compiled operations are loaded (building them now if needed)."""
    return _EXTENSION.available()


def build_error() -> str | None:
    return _EXTENSION.build_error()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) * weight over the last dimension, in x's dtype (float32 arithmetic)."""
    return _EXTENSION.module().rms_norm(x, weight, eps)


def add_rms_norm_(x: torch.Tensor, delta: torch.Tensor, delta_weight: torch.Tensor | None,
                  weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x += delta (or rms_norm(delta, delta_weight): Gemma's post-norms) in place, rounded to
    x's dtype; returns rms_norm(x, weight)."""
    return _EXTENSION.module().add_rms_norm_(x, delta, delta_weight, weight, eps)


def rope_write_kv_(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   q_weight: torch.Tensor | None, k_weight: torch.Tensor | None, eps: float,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, write_blocks: torch.Tensor,
                   write_offsets: torch.Tensor, num_heads: int, num_kv_heads: int) -> None:
    """qkv [T, heads + 2 * kv_heads, D]: Q heads are QK-normed (when q_weight is given) and
    rotated in place; K heads normed, rotated and V heads copied into their cache slots.
    cos/sin: float32 [positions, D] tables (sin signed, see RotaryEmbedding)."""
    _EXTENSION.module().rope_write_kv_(qkv, positions, cos, sin, q_weight, k_weight, eps, k_cache, v_cache,
                                       write_blocks, write_offsets, num_heads, num_kv_heads)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tables: torch.Tensor,
                     context_lens: torch.Tensor, scale: float, window: int | None) -> torch.Tensor:
    """q [B, H, D], one new token per sequence (already in the cache) -> attention output
    [B, H, D] over each sequence's last context_lens[b] positions (the last `window` of them).
    tables: int64 [B, width] block tables (entries past a sequence's blocks are not read)."""
    return _EXTENSION.module().decode_attention(q, k_cache, v_cache, tables, context_lens, scale, window or 0)
