"""Attention over a paged KV cache, in plain torch on CPU.

New K/V are scattered into their slots first, then each sequence attends to its whole context
gathered through its block table. Decode-only steps (one new token per sequence) run as one
padded, masked SDPA call; steps with prefill chunks run one SDPA call per sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backends.attention_metadata import AttentionMetadata


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor, block_size: int) -> None:
    """Store k, v [T, kv_heads, head_dim] at their slots of the [blocks, block_size, ...] caches."""
    blocks = slot_mapping // block_size
    offsets = slot_mapping % block_size
    k_cache[blocks, offsets] = k.to(k_cache.dtype)
    v_cache[blocks, offsets] = v.to(v_cache.dtype)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                    scale: float, sliding_window: int | None) -> torch.Tensor:
    """q [T, heads, d], k/v [T, kv_heads, d] for the new tokens -> attention output [T, heads, d]."""
    write_kv(k_cache, v_cache, k, v, meta.slot_mapping, meta.block_size)
    if meta.is_decode_only:
        return _decode(q, k_cache, v_cache, meta, scale, sliding_window)
    out = torch.empty_like(q)
    for i in range(meta.num_seqs):
        start, end = meta.query_starts[i], meta.query_starts[i + 1]
        out[start:end] = _attend_one(q[start:end], k_cache, v_cache, meta.block_tables[i],
                                     meta.context_lens[i], meta.block_size, scale, sliding_window)
    return out


def _gather(cache: torch.Tensor, block_table: tuple[int, ...], context_len: int, block_size: int,
            first: int = 0) -> torch.Tensor:
    """The cached rows [first, context_len) of one sequence as [kv_heads, n, d]."""
    first_block = first // block_size
    num_blocks = (context_len + block_size - 1) // block_size
    idx = torch.tensor(block_table[first_block:num_blocks], dtype=torch.int64)
    rows = cache[idx].flatten(0, 1)
    offset = first - first_block * block_size
    return rows[offset:offset + context_len - first].transpose(0, 1)


def _attend_one(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                block_table: tuple[int, ...], context_len: int, block_size: int, scale: float,
                sliding_window: int | None) -> torch.Tensor:
    n = q.shape[0]
    # Keys older than the window of the chunk's first query are never attended to.
    first = 0 if sliding_window is None else max(0, context_len - n - sliding_window + 1)
    keys = _gather(k_cache, block_table, context_len, block_size, first).unsqueeze(0)
    values = _gather(v_cache, block_table, context_len, block_size, first).unsqueeze(0)
    query = q.transpose(0, 1).unsqueeze(0).to(keys.dtype)
    num_keys = context_len - first
    if n == num_keys and (sliding_window is None or context_len <= sliding_window):
        out = F.scaled_dot_product_attention(query, keys, values, is_causal=True, scale=scale,
                                             enable_gqa=True)
    elif n == 1:
        out = F.scaled_dot_product_attention(query, keys, values, scale=scale, enable_gqa=True)
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
    if meta.num_seqs == 1:
        return _attend_one(q, k_cache, v_cache, meta.block_tables[0], meta.context_lens[0],
                           meta.block_size, scale, sliding_window)
    bs = meta.block_size
    lens = torch.tensor(meta.context_lens, dtype=torch.int64)
    max_blocks = (int(lens.max()) + bs - 1) // bs
    # Pad every table to the longest with block 0; the mask hides the padding.
    table = torch.zeros((meta.num_seqs, max_blocks), dtype=torch.int64)
    for i, row in enumerate(meta.block_tables):
        used = row[:(meta.context_lens[i] + bs - 1) // bs]
        table[i, :len(used)] = torch.tensor(used, dtype=torch.int64)
    keys = k_cache[table].flatten(1, 2).transpose(1, 2)  # [B, kv_heads, L, d]
    values = v_cache[table].flatten(1, 2).transpose(1, 2)
    k_pos = torch.arange(max_blocks * bs).unsqueeze(0)
    mask = k_pos < lens.unsqueeze(1)
    if sliding_window is not None:
        mask &= k_pos > (lens.unsqueeze(1) - 1 - sliding_window)
    query = q.unsqueeze(2).to(keys.dtype)  # [B, heads, 1, d]
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask[:, None, None, :],
                                         scale=scale, enable_gqa=True)
    return out.squeeze(2).to(q.dtype)
