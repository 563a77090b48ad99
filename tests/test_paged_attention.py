"""Paged attention equals plain causal attention over contiguous K/V, whatever the paging."""

from __future__ import annotations

import pytest
import torch

from backends import fused_ops
from backends.attention_metadata import AttentionMetadata
from backends.paged_attention import attend_cached, paged_attention

HEADS, KV_HEADS, DIM, BLOCK = 4, 2, 8, 4


def reference(q, k, v, positions, window):
    """q [n, H, d] at `positions` attending to k/v [ctx, KV, d] causally (and within window)."""
    k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
    v = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
    scores = torch.einsum("nhd,khd->hnk", q, k) * DIM ** -0.5
    k_pos = torch.arange(k.shape[0])
    allowed = k_pos[None, :] <= positions[:, None]
    if window is not None:
        allowed &= positions[:, None] - k_pos[None, :] < window
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hnk,khd->nhd", scores.softmax(-1), v)


# The torch path, and the fused path (new K/V written first, then attend_cached with the
# compiled decode_attention for single-token queries) where the extension builds.
PATHS = ["torch"] + (["fused"] if fused_ops.available() else [])


@pytest.fixture(params=PATHS)
def path(request):
    return request.param


def run_case(context_lens, num_new, window, seed=0, path="torch"):
    g = torch.Generator().manual_seed(seed)
    num_blocks = 32
    k_cache = torch.full((num_blocks, BLOCK, KV_HEADS, DIM), float("nan"))  # unwritten = NaN
    v_cache = torch.full((num_blocks, BLOCK, KV_HEADS, DIM), float("nan"))
    free = torch.randperm(num_blocks, generator=g).tolist()  # scattered, out-of-order blocks
    tables, full_k, full_v = [], [], []
    for ctx, n in zip(context_lens, num_new):
        table = [free.pop() for _ in range(-(-ctx // BLOCK))]
        tables.append(table)
        k = torch.randn(ctx, KV_HEADS, DIM, generator=g)
        v = torch.randn(ctx, KV_HEADS, DIM, generator=g)
        full_k.append(k)
        full_v.append(v)
        for p in range(ctx - n):  # the cached part was written by earlier steps
            k_cache[table[p // BLOCK], p % BLOCK] = k[p]
            v_cache[table[p // BLOCK], p % BLOCK] = v[p]
    meta = AttentionMetadata.build(num_new, context_lens, tables, BLOCK)
    q = torch.randn(sum(num_new), HEADS, DIM, generator=g)
    new_k = torch.cat([k[ctx - n:] for k, ctx, n in zip(full_k, context_lens, num_new)])
    new_v = torch.cat([v[ctx - n:] for v, ctx, n in zip(full_v, context_lens, num_new)])
    if path == "torch":
        out = paged_attention(q, new_k, new_v, k_cache, v_cache, meta, DIM ** -0.5, window)
    else:
        k_cache[meta.write_blocks, meta.write_offsets] = new_k
        v_cache[meta.write_blocks, meta.write_offsets] = new_v
        out = attend_cached(q, k_cache, v_cache, meta, DIM ** -0.5, window, fused=True)
    for i, (ctx, n) in enumerate(zip(context_lens, num_new)):
        s, e = meta.query_starts[i], meta.query_starts[i + 1]
        expected = reference(q[s:e], full_k[i], full_v[i], torch.arange(ctx - n, ctx), window)
        torch.testing.assert_close(out[s:e], expected, atol=1e-5, rtol=1e-5)


def test_prefill_from_scratch(path):
    run_case([7], [7], None, path=path)


def test_chunked_prefill_on_cached_prefix_and_decodes_in_one_batch(path):
    run_case([13, 9, 5], [6, 1, 1], None, path=path)


def test_batched_decode_of_different_lengths(path):
    run_case([3, 17, 8, 1], [1, 1, 1, 1], None, path=path)


def test_sliding_window_prefill_and_decode(path):
    run_case([19], [19], 5, path=path)
    run_case([19], [7], 5, path=path)
    run_case([19, 6, 12], [1, 1, 1], 5, path=path)


def test_metadata_rejects_inconsistent_input():
    import pytest

    with pytest.raises(ValueError):
        AttentionMetadata.build([3], [2], [[0]], BLOCK)
    with pytest.raises(ValueError):
        AttentionMetadata.build([1], [9], [[0, 1]], BLOCK)
