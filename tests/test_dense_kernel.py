"""The compiled dense product (backends/dense_kernel.cpp) against float64, and DenseLinear's dispatch.

The kernel sums in float32 in its own order and rounds a bfloat16 output once, as F.linear does;
so against the float64 product of the same inputs it may differ by float32 summation error (a
few ulps of sum |x||w| per element) plus, for bfloat16, the one final rounding (half an ulp of y).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backends import dense_kernel
from backends.dense_weights import KERNEL_MAX_TOKENS, DenseLinear

pytestmark = pytest.mark.skipif(not dense_kernel.available(),
                                reason=f"compiled dense kernel unavailable: {dense_kernel.build_error()}")

DTYPES = [torch.bfloat16, torch.float32]
# (N, K): row counts off the 4-row tile, K off the 16/32-element vector and under one vector.
SHAPES = [(1, 1), (3, 7), (5, 33), (13, 100), (64, 576), (61, 1000), (7, 2049)]


def check(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> None:
    x64, w64 = x.double(), w.double()
    ref = x64 @ w64.T + (0.0 if bias is None else bias.double())
    scale = x64.abs() @ w64.abs().T  # what the float32 summation error scales with
    rounding = 2.0 ** -8 * ref.abs() if y.dtype == torch.bfloat16 else 0.0
    bound = rounding + 1e-5 * scale + 1e-30
    assert y.dtype == w.dtype and y.shape == ref.shape
    assert bool(((y.double() - ref).abs() <= bound).all()), float(((y.double() - ref).abs() - bound).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_float64_for_every_token_count(dtype, shape):
    n, k = shape
    g = torch.Generator().manual_seed(n * 1000 + k)
    w = torch.randn(n, k, generator=g).to(dtype)
    for t in range(1, 18):
        x = torch.randn(t, k, generator=g).to(dtype)
        check(dense_kernel.linear(x, w), x, w, None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_is_added_before_the_one_rounding(dtype):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(37, 300, generator=g).to(dtype)
    bias = (100 * torch.randn(37, generator=g)).to(dtype)
    x = torch.randn(5, 300, generator=g).to(dtype)
    check(dense_kernel.linear(x, w, bias), x, w, bias)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_x(dtype):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(50, 96, generator=g).to(dtype)
    x = torch.randn(96, 6, generator=g).to(dtype).T  # [6, 96] with strides (1, 6)
    assert not x.is_contiguous()
    check(dense_kernel.linear(x, w), x, w, None)


def test_threads_split_rows_without_changing_the_sums():
    """Every row's sum is the same whether one thread or several compute it (grain 0 vs huge)."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(1027, 640, generator=g).to(torch.bfloat16)
    x = torch.randn(3, 640, generator=g).to(torch.bfloat16)
    assert torch.equal(dense_kernel.linear(x, w, grain_bytes=0), dense_kernel.linear(x, w, grain_bytes=1 << 40))


def test_rejects_mismatched_inputs():
    w = torch.zeros(4, 8, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="x must have W's dtype"):
        dense_kernel.linear(torch.zeros(1, 8), w)
    with pytest.raises(RuntimeError, match="K = W.size"):
        dense_kernel.linear(torch.zeros(1, 9, dtype=torch.bfloat16), w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_linear_uses_the_kernel_up_to_the_threshold_or_always_in_bfloat16(dtype, monkeypatch):
    calls = []
    kernel = dense_kernel.linear
    monkeypatch.setattr(dense_kernel, "linear", lambda *a, **kw: calls.append(a[0].shape) or kernel(*a, **kw))
    g = torch.Generator().manual_seed(4)
    layer = DenseLinear(torch.randn(24, 40, generator=g).to(dtype), torch.randn(24, generator=g).to(dtype))
    assert layer.use_kernel
    for t in (1, KERNEL_MAX_TOKENS, KERNEL_MAX_TOKENS + 1):
        x = torch.randn(t, 40, generator=g)  # float32 in: cast to the weight's dtype first
        y = layer(x)
        check(y, x.to(dtype), layer.weight, layer.bias)
    expected = [(1, 40), (KERNEL_MAX_TOKENS, 40)]  # float32: F.linear beyond the threshold
    if dtype == torch.bfloat16:  # every batch size (batch invariance)
        expected.append((KERNEL_MAX_TOKENS + 1, 40))
    assert calls == expected
    calls.clear()
    y = layer(torch.randn(2, 1, 40, generator=g).to(dtype))  # leading dims are kept
    assert y.shape == (2, 1, 24) and calls == [(2, 40)]


def test_dense_linear_keeps_f_linear_when_disabled(monkeypatch):
    monkeypatch.setenv("ROUTEGATE_NO_DENSE_KERNEL", "1")
    layer = DenseLinear(torch.randn(8, 16).to(torch.bfloat16), None)
    assert not layer.use_kernel
    x = torch.randn(1, 16).to(torch.bfloat16)
    assert torch.equal(layer(x), F.linear(x, layer.weight))
