"""The packed bfloat16 product (dense_kernel_packed.h, CPUs with AVX512_BF16): exact layout
round trips, float64 agreement, batch invariance, DenseLinear's choice and the tied embedding."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from backends import dense_kernel
from backends.dense_weights import DenseEmbedding, DenseLinear

from tests.test_dense_kernel import check

needs_packed = pytest.mark.skipif(not dense_kernel.packed_supported(),
                                  reason="packed bfloat16 product needs the dense kernel on an AVX512_BF16 CPU")
# Both paths of linear_packed: vdpbf16ps (every AVX512_BF16 CPU) and AMX tiles (K % 32 == 0).
paths = pytest.mark.parametrize("amx", [False, pytest.param(True, marks=pytest.mark.skipif(
    not dense_kernel.amx_supported(), reason="AMX tiles need an AMX_BF16 CPU (Sapphire Rapids or later)"))])


def test_pack_layout_and_round_trip():
    w = torch.arange(32 * 6, dtype=torch.float32).view(32, 6).to(torch.bfloat16)
    packed = dense_kernel.pack(w)
    assert packed.shape == (2, 3, 16, 2)
    # element (b, p, r, j) is W[16 b + r, 2 p + j]
    assert packed[1, 2, 5, 1].item() == w[21, 5].item() and packed[0, 1, 15, 0].item() == w[15, 2].item()
    assert torch.equal(dense_kernel.unpack(packed), w)
    ids = torch.tensor([31, 0, 16, 7, 31])
    assert torch.equal(dense_kernel.packed_rows(packed, ids), w[ids])


@needs_packed
@paths
@pytest.mark.parametrize("shape", [(16, 2), (48, 40), (64, 576), (3072, 576), (576, 1536), (32, 64)])
def test_matches_float64_for_every_token_count(shape, amx):
    n, k = shape
    g = torch.Generator().manual_seed(n + k)
    w = torch.randn(n, k, generator=g).to(torch.bfloat16)
    bias = torch.randn(n, generator=g).to(torch.bfloat16)
    packed = dense_kernel.pack(w)
    for t in (1, 2, 3, 4, 5, 8, 9, 13, 16, 17, 33, 48):
        x = torch.randn(t, k, generator=g).to(torch.bfloat16)
        check(dense_kernel.linear_packed(x, packed, amx=amx), x, w, None)
        check(dense_kernel.linear_packed(x, packed, bias, amx=amx), x, w, bias)


@needs_packed
@paths
def test_a_tokens_outputs_do_not_depend_on_the_batch(amx):
    """Token tiles (8, 4 and 1 tokens; AMX: 16 and the rest), groups of blocks and the thread
    split give every token the same bits."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(1040, 640, generator=g).to(torch.bfloat16)  # 65 blocks: 16 groups of 4 and 1
    bias = torch.randn(1040, generator=g).to(torch.bfloat16)
    packed = dense_kernel.pack(w)
    x = torch.randn(37, 640, generator=g).to(torch.bfloat16)
    full = dense_kernel.linear_packed(x, packed, bias, amx=amx)
    for t in range(37):
        assert torch.equal(dense_kernel.linear_packed(x[t:t + 1], packed, bias, amx=amx), full[t:t + 1])
    assert torch.equal(dense_kernel.linear_packed(x[3:15], packed, bias, amx=amx), full[3:15])
    assert torch.equal(dense_kernel.linear_packed(x[5:], packed, bias, amx=amx), full[5:])
    assert torch.equal(dense_kernel.linear_packed(x, packed, bias, grain_bytes=0, amx=amx),
                       dense_kernel.linear_packed(x, packed, bias, grain_bytes=1 << 40, amx=amx))


@needs_packed
def test_amx_follows_the_environment_switch():
    """ROUTEGATE_NO_AMX=1 keeps a process on vdpbf16ps; the choice is made once per process."""
    code = "from backends import dense_kernel as d; print(d.amx_supported())"
    env = {**os.environ, "ROUTEGATE_NO_AMX": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@needs_packed
def test_rejects_mismatched_inputs():
    packed = dense_kernel.pack(torch.zeros(16, 8, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="x must be bfloat16"):
        dense_kernel.linear_packed(torch.zeros(1, 8), packed)
    with pytest.raises(RuntimeError, match="K = 8"):
        dense_kernel.linear_packed(torch.zeros(1, 6, dtype=torch.bfloat16), packed)
    with pytest.raises(RuntimeError, match="wp must be"):
        dense_kernel.linear_packed(torch.zeros(1, 8, dtype=torch.bfloat16), packed.float())


@needs_packed
def test_dense_linear_packs_bfloat16_when_the_shape_allows():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(48, 40, generator=g).to(torch.bfloat16)
    layer = DenseLinear(w, None)
    assert layer.packed is not None and layer.weight is None
    assert torch.equal(layer.dense_weight(), w)
    x = torch.randn(2, 3, 40, generator=g)  # float32 in: cast first; leading dims kept
    y = layer(x)
    assert y.shape == (2, 3, 48) and y.dtype == torch.bfloat16
    check(y.view(6, 48), x.view(6, 40).to(torch.bfloat16), w, None)
    # rows off the 16-row block, or float32: the row-major kernel
    assert DenseLinear(torch.randn(24, 40).to(torch.bfloat16), None).packed is None
    assert DenseLinear(torch.randn(48, 40), None).packed is None


@needs_packed
def test_tied_embedding_reads_the_packed_lm_head():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(64, 32, generator=g).to(torch.bfloat16)
    embedding = DenseEmbedding(w)
    ids = torch.tensor([[3, 63, 16], [0, 3, 47]])
    before = embedding(ids)
    assert torch.equal(before, F.embedding(ids, w))
    embedding.share_packed(DenseLinear(w, None).packed)
    assert embedding.weight is None
    assert torch.equal(embedding(ids), before)
