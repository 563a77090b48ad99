"""The compiled fused operations equal the torch operations they replace (fused_ops.cpp)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backends import fused_ops
from backends.models.layers import RMSNorm, RotaryEmbedding

pytestmark = pytest.mark.skipif(not fused_ops.available(), reason=f"fused ops not built: {fused_ops.build_error()}")

DTYPES = [torch.float32, torch.bfloat16]


def torch_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x.float(), w.shape, w, eps).to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_equals_torch(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(5, 3, 576, generator=g) * 4).to(dtype)
    w = torch.randn(576, generator=g)
    ours = fused_ops.rms_norm(x, w, 1e-6)
    assert ours.dtype == dtype and ours.shape == x.shape
    torch.testing.assert_close(ours, torch_norm(x, w, 1e-6), rtol=1e-5 if dtype == torch.float32 else 8e-3,
                               atol=1e-5 if dtype == torch.float32 else 8e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("post_norm", [False, True])
def test_add_rms_norm_updates_the_residual_and_returns_its_norm(dtype, post_norm):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 640, generator=g).to(dtype)
    delta = torch.randn(7, 640, generator=g).to(dtype)
    w, dw = torch.randn(640, generator=g), torch.randn(640, generator=g)
    expected_x = x + (torch_norm(delta, dw, 1e-6) if post_norm else delta)
    x_in = x.clone()
    h = fused_ops.add_rms_norm_(x_in, delta, dw if post_norm else None, w, 1e-6)
    if post_norm:  # the normed delta may differ in its last bit (summation order)
        torch.testing.assert_close(x_in, expected_x, rtol=1e-5 if dtype == torch.float32 else 8e-3, atol=1e-5)
    else:  # one rounded addition, as torch's
        assert torch.equal(x_in, expected_x)
    torch.testing.assert_close(h, torch_norm(x_in, w, 1e-6), rtol=1e-5 if dtype == torch.float32 else 8e-3,
                               atol=1e-5 if dtype == torch.float32 else 8e-3)


def test_rms_norm_module_add_is_the_same_fused_or_not():
    g = torch.Generator().manual_seed(2)
    x, delta = torch.randn(3, 64, generator=g), torch.randn(3, 64, generator=g)
    fused = RMSNorm(torch.randn(64, generator=g), 1e-6)
    plain = RMSNorm(fused.weight.data.clone(), 1e-6)
    plain.fused = False
    a, b = x.clone(), x.clone()
    torch.testing.assert_close(fused.add_(a, delta), plain.add_(b, delta), rtol=1e-6, atol=1e-6)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qk_norm", [False, True])
def test_rope_write_kv_equals_the_torch_path(dtype, qk_norm):
    heads, kv_heads, dim, block, num_blocks = 4, 2, 16, 4, 6
    g = torch.Generator().manual_seed(3)
    rope = RotaryEmbedding(dim, 10000.0, 64)
    qkv = torch.randn(5, heads + 2 * kv_heads, dim, generator=g).to(dtype)
    positions = torch.tensor([0, 1, 2, 9, 30])
    blocks, offsets = torch.tensor([3, 3, 3, 5, 1]), torch.tensor([0, 1, 2, 1, 2])
    q_norm = RMSNorm(torch.randn(dim, generator=g), 1e-6) if qk_norm else None
    k_norm = RMSNorm(torch.randn(dim, generator=g), 1e-6) if qk_norm else None
    k_cache = torch.full((num_blocks, block, kv_heads, dim), float("nan"), dtype=dtype)
    v_cache = k_cache.clone()

    q, k, v = qkv[:, :heads], qkv[:, heads:heads + kv_heads], qkv[:, heads + kv_heads:]
    if qk_norm:
        q, k = torch_norm(q, q_norm.weight, 1e-6), torch_norm(k, k_norm.weight, 1e-6)
    tables = (rope.cos[positions].unsqueeze(1), rope.sin[positions].unsqueeze(1))  # float32, as the kernel
    expected_q = rope(q.float(), positions, tables).to(dtype)
    expected_k = rope(k.float(), positions, tables).to(dtype)
    expected_v = v.clone()

    ours = qkv.clone()
    fused_ops.rope_write_kv_(ours, positions, rope.cos, rope.sin, q_norm.weight if qk_norm else None,
                             k_norm.weight if qk_norm else None, 1e-6, k_cache, v_cache, blocks, offsets,
                             heads, kv_heads)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ours[:, :heads], expected_q, **tol)
    torch.testing.assert_close(k_cache[blocks, offsets], expected_k, **tol)
    assert torch.equal(v_cache[blocks, offsets], expected_v)
    written = torch.zeros(num_blocks, block, dtype=torch.bool)
    written[blocks, offsets] = True
    assert bool(k_cache[~written].isnan().all()) and bool(v_cache[~written].isnan().all())  # nothing else touched
    assert torch.equal(ours[:, heads:], qkv[:, heads:])  # K/V rows of qkv are left as they were


def test_rope_write_kv_rejects_bad_slots_and_positions():
    rope = RotaryEmbedding(8, 10000.0, 16)
    qkv = torch.zeros(1, 3, 8)
    cache = torch.zeros(2, 4, 1, 8)
    with pytest.raises(RuntimeError, match="outside the RoPE table"):
        fused_ops.rope_write_kv_(qkv, torch.tensor([16]), rope.cos, rope.sin, None, None, 0.0, cache, cache.clone(),
                                 torch.tensor([0]), torch.tensor([0]), 1, 1)
    with pytest.raises(RuntimeError, match="write slot out of range"):
        fused_ops.rope_write_kv_(qkv, torch.tensor([3]), rope.cos, rope.sin, None, None, 0.0, cache, cache.clone(),
                                 torch.tensor([2]), torch.tensor([0]), 1, 1)


def test_decode_attention_bfloat16_against_float64_reference():
    heads, kv_heads, dim, block = 8, 2, 32, 16
    g = torch.Generator().manual_seed(4)
    k_cache = torch.randn(6, block, kv_heads, dim, generator=g).bfloat16()
    v_cache = torch.randn(6, block, kv_heads, dim, generator=g).bfloat16()
    q = torch.randn(2, heads, dim, generator=g).bfloat16()
    tables = torch.tensor([[4, 1, 0], [2, 0, 0]])
    lens = torch.tensor([40, 9])
    out = fused_ops.decode_attention(q, k_cache, v_cache, tables, lens, dim ** -0.5, None)
    assert out.dtype == torch.bfloat16
    for b in range(2):
        keys = torch.cat([k_cache[i] for i in tables[b]])[: lens[b]].double()  # [ctx, kv, d]
        values = torch.cat([v_cache[i] for i in tables[b]])[: lens[b]].double()
        keys, values = keys.repeat_interleave(heads // kv_heads, 1), values.repeat_interleave(heads // kv_heads, 1)
        scores = torch.einsum("hd,khd->hk", q[b].double(), keys) * dim ** -0.5
        expected = torch.einsum("hk,khd->hd", scores.softmax(-1), values)
        torch.testing.assert_close(out[b].double(), expected, rtol=1e-2, atol=1e-2)


def test_decode_attention_rejects_a_context_longer_than_its_table():
    cache = torch.zeros(4, 4, 1, 8)
    with pytest.raises(RuntimeError, match="does not fit the block table"):
        fused_ops.decode_attention(torch.zeros(1, 1, 8), cache, cache, torch.tensor([[0, 1]]), torch.tensor([9]),
                                   1.0, None)
    with pytest.raises(RuntimeError, match="block out of range"):
        fused_ops.decode_attention(torch.zeros(1, 1, 8), cache, cache, torch.tensor([[0, 7]]), torch.tensor([8]),
                                   1.0, None)
