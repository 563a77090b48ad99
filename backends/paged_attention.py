"""Attention over a paged KV cache, in plain torch on CPU.

New K/V are scattered into their slots first, then each sequence attends to its context
gathered through the step's precomputed indices. With the compiled fused operations
(fused_ops.py), single-token queries run in one decode_attention call and chunks in SDPA per
sequence; without them, decode-only steps (one new token per sequence) run as one padded,
masked SDPA call and steps with prefill chunks one SDPA call per sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backends import fused_ops
from backends.attention_metadata import AttentionMetadata


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                    scale: float, sliding_window: int | None) -> torch.Tensor:
    """q [T, heads, d], k/v [T, kv_heads, d] for the new tokens -> attention output [T, heads, d].

    k_cache, v_cache: [blocks, block_size, kv_heads, d] views of one layer's pages.
    """
    k_cache[meta.write_blocks, meta.write_offsets] = k.to(k_cache.dtype)
    v_cache[meta.write_blocks, meta.write_offsets] = v.to(v_cache.dtype)
    return attend_cached(q, k_cache, v_cache, meta, scale, sliding_window, fused=False)


def attend_cached(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                  scale: float, sliding_window: int | None, fused: bool) -> torch.Tensor:
    """Attention of q [T, heads, d] whose own K/V are already in the cache -> [T, heads, d].

    fused: every sequence with one new token (decodes, in pure-decode and mixed steps alike, so
    a sequence's decode never depends on what it is batched with) goes through one call of
    fused_ops.decode_attention; longer chunks run SDPA per sequence."""
    if fused:
        seqs, rows, tables, lens = meta.single_token_seqs()
        if len(seqs) == meta.num_seqs:
            return fused_ops.decode_attention(q, k_cache, v_cache, tables, lens, scale, sliding_window)
        out = torch.empty_like(q)
        if seqs:
            out[rows] = fused_ops.decode_attention(q[rows], k_cache, v_cache, tables, lens, scale, sliding_window)
        single = set(seqs)
        for i in range(meta.num_seqs):
            if i not in single:
                start, end = meta.query_starts[i], meta.query_starts[i + 1]
                out[start:end] = _attend_one(q[start:end], k_cache, v_cache, meta, i, scale, sliding_window)
        return out
    if meta.is_decode_only and meta.num_seqs > 1:
        return _decode(q, k_cache, v_cache, meta, scale, sliding_window)
    out = torch.empty_like(q)
    for i in range(meta.num_seqs):
        start, end = meta.query_starts[i], meta.query_starts[i + 1]
        out[start:end] = _attend_one(q[start:end], k_cache, v_cache, meta, i, scale, sliding_window)
    return out


def _attend_one(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                meta: AttentionMetadata, i: int, scale: float, sliding_window: int | None) -> torch.Tensor:
    n, context_len = q.shape[0], meta.context_lens[i]
    # Keys older than the window of the chunk's first query are never attended to.
    first = 0 if sliding_window is None else max(0, context_len - n - sliding_window + 1)
    blocks, skip = meta.read_pages(i, first)
    keys = _gather(k_cache, blocks)[skip:context_len - first + skip].transpose(0, 1).unsqueeze(0)  # [1, kv_heads, keys, d]
    values = _gather(v_cache, blocks)[skip:context_len - first + skip].transpose(0, 1).unsqueeze(0)
    query = q.transpose(0, 1).unsqueeze(0).to(keys.dtype)  # [1, heads, n, d]
    num_keys = context_len - first
    if n == 1:
        out = F.scaled_dot_product_attention(query, keys, values, scale=scale, enable_gqa=True)
    elif n == num_keys and (sliding_window is None or context_len <= sliding_window):
        out = F.scaled_dot_product_attention(query, keys, values, is_causal=True, scale=scale,
                                             enable_gqa=True)
    else:
        q_pos = torch.arange(context_len - n, context_len).unsqueeze(1)
        k_pos = torch.arange(first, context_len).unsqueeze(0)
        mask = k_pos <= q_pos
        if sliding_window is not None:
            mask &= (q_pos - k_pos) < sliding_window
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale,
                                             enable_gqa=True)
    return out.squeeze(0).transpose(0, 1).to(q.dtype)


def _decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            meta: AttentionMetadata, scale: float, sliding_window: int | None) -> torch.Tensor:
    blocks, offsets, mask = meta.padded_decode(sliding_window)
    keys = k_cache[blocks, offsets].transpose(1, 2)  # [B, kv_heads, L, d]
    values = v_cache[blocks, offsets].transpose(1, 2)
    query = q.unsqueeze(2).to(keys.dtype)  # [B, heads, 1, d]
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale,
                                         enable_gqa=True)
    return out.squeeze(2).to(q.dtype)


def _gather(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Whole pages [n] of one layer's cache -> [n * block_size, kv_heads, d] (one copy)."""
    return cache.index_select(0, blocks).flatten(0, 1)
