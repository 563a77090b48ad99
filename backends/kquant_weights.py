"""Weights of the k-quant engine: every matrix stays in its GGUF block format.

Matrices are handed to the model as QuantizedLinear / QuantizedEmbedding over the file's own
block bytes (views of the memory map; only llama's Q/K rows, which the checkpoint reorders,
are copies), so weight memory is about the GGUF file size. A tied embedding and LM head share
one BlockMatrix. Norm weights and other vectors are float32, as in the full-precision engine.

dtype is the activation dtype (and so the KV cache's): float32 (the default) or bfloat16.
The kernels compute in float32 either way; bfloat16 only halves KV memory and adds rounding.
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType
from torch import nn

from backends.checkpoint import GGUFCheckpoint
from backends.dense_weights import DTYPES, DenseEmbedding, DenseLinear, stacked_bias
from backends.quantization.quantized_linear import (BlockMatrix, QuantizedEmbedding, QuantizedLinear,
                                                   StackedBlockMatrices)

_DENSE_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)


class KQuantWeights:
    """A WeightSource over a GGUF checkpoint that multiplies matrices in block format."""

    def __init__(self, checkpoint: GGUFCheckpoint, dtype: str = "float32") -> None:
        if not isinstance(checkpoint, GGUFCheckpoint):
            raise ValueError(f"the kquant engine needs a GGUF checkpoint, got {type(checkpoint).__name__} "
                             f"({getattr(checkpoint, 'path', '?')}); use engine = \"full_precision\"")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.checkpoint = checkpoint
        self.dtype = DTYPES[dtype]
        self._matrices: dict[str, BlockMatrix | torch.Tensor] = {}

    def _matrix(self, name: str) -> BlockMatrix | torch.Tensor:
        """The block matrix of `name`, or a dense float32 tensor for F32/F16/BF16 tensors."""
        if name not in self._matrices:
            raw = self.checkpoint.raw(name)
            if len(raw.shape) != 2:
                raise ValueError(f"{name}: expected a matrix, got shape {raw.shape}")
            rows, cols = raw.shape
            if raw.ggml_type in _DENSE_TYPES:
                self._matrices[name] = raw.data.float().reshape(rows, cols)
            else:
                self._matrices[name] = BlockMatrix(raw.data.reshape(rows, -1), raw.ggml_type, rows, cols)
        return self._matrices[name]

    def has(self, name: str) -> bool:
        return self.checkpoint.has(name + ".weight")

    def linear(self, name: str) -> nn.Module:
        bias = None
        if self.checkpoint.has(name + ".bias"):
            bias = self.checkpoint.dense(name + ".bias")
        matrix = self._matrix(name + ".weight")
        if isinstance(matrix, torch.Tensor):
            return DenseLinear(matrix.to(self.dtype), None if bias is None else bias.to(self.dtype))
        return QuantizedLinear(matrix, bias)

    def linears(self, names: list[str]) -> nn.Module:
        """The named projections as one module with their outputs side by side: one kernel call
        over the stacked block matrices when all are quantized, else each part on its own."""
        matrices = [self._matrix(n + ".weight") for n in names]
        if all(isinstance(m, BlockMatrix) for m in matrices) and len({m.cols for m in matrices}) == 1:
            bias = stacked_bias(self.checkpoint, names, [m.rows for m in matrices], torch.float32)
            return QuantizedLinear(StackedBlockMatrices(matrices), bias)
        return ConcatLinear([self.linear(n) for n in names])

    def embedding(self, name: str) -> nn.Module:
        matrix = self._matrix(name + ".weight")
        if isinstance(matrix, torch.Tensor):
            return DenseEmbedding(matrix.to(self.dtype))
        return QuantizedEmbedding(matrix, self.dtype)

    def vector(self, name: str) -> torch.Tensor:
        return self.checkpoint.dense(name + ".weight")


class ConcatLinear(nn.Module):
    """Several projections of the same input, outputs side by side (mixed dense and quantized)."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)
