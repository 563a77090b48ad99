"""Weights of the full-precision engine: every matrix dequantized to float32 or bfloat16.

DenseLinear multiplies up to KERNEL_MAX_TOKENS tokens with dense_kernel.cpp (decode: memory-bound,
and the kernel reads each weight byte once per call) and more with F.linear (prefill: torch's GEMM
out-computes it); the measurements behind the threshold are in dense_kernel.py. Constructing the
first DenseLinear builds the extension, so the engine pays for it at load, not in a request.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backends import dense_kernel
from backends.checkpoint import Checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
KERNEL_MAX_TOKENS = 16  # tokens per product up to which dense_kernel beats F.linear (dense_kernel.py)


def stacked_bias(checkpoint: Checkpoint, names: list[str], rows: list[int],
                 dtype: torch.dtype) -> torch.Tensor | None:
    """The biases of projections stacked by rows (zeros for a part without one), or None when
    no part has a bias (Qwen2 biases Q, K and V; nothing else does)."""
    if not any(checkpoint.has(n + ".bias") for n in names):
        return None
    return torch.cat([checkpoint.dense(n + ".bias").to(dtype) if checkpoint.has(n + ".bias")
                      else torch.zeros(r, dtype=dtype) for n, r in zip(names, rows)])


class DenseLinear(nn.Module):
    """y = x W^T (+ b), with W [out, in] in the engine's dtype.

    On CPUs with AVX512_BF16 a bfloat16 W is kept only in dense_kernel's packed layout (16-row
    blocks: one stream per block, no horizontal sums; multiplied on AMX tiles where the CPU has
    AMX-BF16; dense_kernel_packed.h and dense_kernel_amx.h have the measurements):
    then `weight` is None and `packed` holds it (`dense_weight()` unpacks a copy)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.dtype = weight.dtype
        # Decided once (building the extension on first use), not per call on the decode path.
        self.use_kernel = (weight.dtype in (torch.float32, torch.bfloat16) and weight.is_contiguous()
                           and weight.device.type == "cpu" and dense_kernel.available())
        self.packed = None
        if self.use_kernel and dense_kernel.can_pack(weight):
            self.packed = nn.Parameter(dense_kernel.pack(weight), requires_grad=False)
            self.weight = None
        else:
            self.weight = nn.Parameter(weight, requires_grad=False)

    def dense_weight(self) -> torch.Tensor:
        """W [out, in] (unpacked: a copy when packed)."""
        return dense_kernel.unpack(self.packed) if self.packed is not None else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.packed is not None:  # bfloat16 at every batch size, as below
            rows = x.reshape(-1, x.shape[-1])
            return dense_kernel.linear_packed(rows, self.packed, self.bias).view(*x.shape[:-1], -1)
        # bfloat16 takes the kernel at every batch size: each output is then computed the same way
        # whatever the batch, and with activations rounded to bfloat16 after every op, F.linear's
        # other summation order flipped tokens between a request alone and batched (the Redis
        # tier's exact-replay tests). It costs ~20-30% of prefill's products (dense_kernel.py).
        if self.use_kernel and x.numel() > 0 and (self.weight.dtype == torch.bfloat16
                                                  or x.numel() <= KERNEL_MAX_TOKENS * x.shape[-1]):
            rows = x.reshape(-1, x.shape[-1])
            return dense_kernel.linear(rows, self.weight, self.bias).view(*x.shape[:-1], -1)
        return F.linear(x, self.weight, self.bias)


class DenseEmbedding(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.packed = None

    def share_packed(self, packed: torch.Tensor) -> None:
        """Look rows up in a tied LM head's packed matrix instead of keeping a second copy."""
        self.packed, self.weight = packed, None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return dense_kernel.packed_rows(self.packed, ids.reshape(-1)).view(*ids.shape, -1)
        return F.embedding(ids, self.weight)


class DenseWeights:
    """A WeightSource that converts each tensor once; tied embeddings share one tensor."""

    def __init__(self, checkpoint: Checkpoint, dtype: str = "float32") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.checkpoint = checkpoint
        self.dtype = DTYPES[dtype]
        self._cache: dict[str, torch.Tensor] = {}
        self._embeddings: dict[str, DenseEmbedding] = {}  # by tensor name, for tied LM heads

    def _matrix(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            self._cache[name] = self.checkpoint.dense(name).to(self.dtype).contiguous()
        return self._cache[name]

    def has(self, name: str) -> bool:
        return self.checkpoint.has(name + ".weight")

    def linear(self, name: str) -> nn.Module:
        bias = None
        if self.checkpoint.has(name + ".bias"):
            bias = self.checkpoint.dense(name + ".bias").to(self.dtype)
        layer = DenseLinear(self._matrix(name + ".weight"), bias)
        embedding = self._embeddings.get(name)
        if embedding is not None and layer.packed is not None:
            # A tied LM head packed its matrix: the embedding reads the packed copy, and the
            # row-major one is freed (Gemma 3's 262k x 640 table is 320 MiB in bfloat16).
            embedding.share_packed(layer.packed)
            self._cache.pop(name + ".weight", None)
        return layer

    def linears(self, names: list[str]) -> nn.Module:
        """One DenseLinear over the named matrices stacked by rows (outputs side by side); the
        parts are not kept separately, so this costs no extra weight memory."""
        weights = [self.checkpoint.dense(n + ".weight").to(self.dtype) for n in names]
        bias = stacked_bias(self.checkpoint, names, [w.shape[0] for w in weights], self.dtype)
        return DenseLinear(torch.cat(weights).contiguous(), bias)

    def embedding(self, name: str) -> nn.Module:
        self._embeddings[name] = DenseEmbedding(self._matrix(name + ".weight"))
        return self._embeddings[name]

    def vector(self, name: str) -> torch.Tensor:
        return self.checkpoint.dense(name + ".weight")
