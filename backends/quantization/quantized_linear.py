"""Linear layers and embeddings that keep their weights in GGML block format.

    matrix = BlockMatrix(blocks, GGMLQuantizationType.Q4_K, out_features, in_features)
    y = QuantizedLinear(matrix)(x)        # x [T, in] -> [T, out], same contract as DenseLinear
    rows = QuantizedEmbedding(matrix)(ids)  # decodes only the rows of `ids`

The weights are the GGUF file's own block bytes (a view of its memory map where no rows are
reordered), so the engine's weight memory is the file size. Three product paths:

- integer path (x86 CPUs with AVX2, every format but Q2_K/Q3_K), at every batch size:
  activations are rounded to 8 bits per 32 values, as llama.cpp does, and multiplied with the
  weights' integer codes (kernel_int8.h, kernel_int8_avx2.h: blocks decoded in registers, byte
  products by vpdpbusd with VNNI, else vpmaddubsw + vpmaddwd). Each output is computed by the
  same instructions whatever the batch, so batching never changes a request's tokens.
  Single-thread CPU time on the 2-core EPYC (2026-12-07, busy machine, the earlier 512-bit
  kernel), integer path / float kernel at T=1 and integer path / dequantize + GEMM at larger T:

    whole model at T=1 (all matrices)   SmolLM2 11.5 / 14.5 ms   Gemma 22.4 / 34.7 ms
    SmolLM2 Q4_1 3072x576               T=16 0.83/0.78   T=64 3.2/2.8   T=512 30/20
    Gemma Q5_0 4096x640                 T=16 1.28/1.28   T=64 4.8/4.9   T=512 40/39
    Gemma Q8_0 16384x640                T=16 5.8/5.8     T=64 20/19     T=512 183/163
    Gemma Q4_K 640x2048                 T=16 0.62/0.62   T=64 2.2/2.4   T=512 21/17

  The 256-bit kernels then took 0.6x that kernel's time at T=1 (2 threads, every layer matrix
  of both models: SmolLM2 4.45 vs 7.25 ms, Gemma 3.90 vs 6.31 ms), 0.6-0.7x at T=4 and about
  the same at T=16-512 on the Zen 4 EPYC.
  On the 2-core Zen 3 (AVX2 only) the AVX2 path is what runs; against its first version (rows
  decoded to a buffer first) it took 0.5-0.96x the time at T=1-4 and the same at T=16-64.
  On CPUs with AMX_INT8 the same integer sums come from AMX tiles (kernel_int8_amx.h) for every
  format but Q6_K; on the 2-core Xeon, 2 threads, weights from DRAM (2026-12-08), us per product,
  tiles / 256-bit kernels:

    SmolLM2 Q4_1 576x1536               T=1 57/58     T=16 203/313
    SmolLM2 Q8_0 49152x576 (LM head)    T=1 2051/2192 T=16 4434/7691
    Gemma Q5_0 2048x640                 T=1 79/88     T=16 250/428
    Gemma Q4_K 640x2048                 T=1 77/80     T=16 285/461

- float kernel (T <= KERNEL_MAX_TOKENS, CPUs without AVX2): kernel_qmatmul.cpp decodes each weight
  row to float32 once in L1 and multiplies it with every token, bit-identical to dequantize().
- larger T without an integer path: the weight is decoded to float32 in tiles of TILE_BYTES and
  multiplied with torch's GEMM. Float kernel / dequantize + GEMM, single-thread ms (EPYC):

    Gemma Q5_0 2048x640    T=1 0.2/1.9   T=8 0.6/1.1   T=16 1.4/0.9   T=32 2.6/2.2   T=64 4.9/4.0
    Gemma Q4_K 640x2048    T=1 0.2/0.8   T=8 0.8/1.2   T=16 1.4/1.5   T=32 2.5/2.0   T=64 4.4/2.6
    SmolLM2 Q4_1 1536x576  T=1 0.1/2.0   T=8 0.3/0.9   T=16 0.9/0.9   T=32 1.8/1.2   T=64 3.5/2.3

`bench/bench_kquant.py --kernels` prints the kernel-vs-GEMM table for a model.
Without a C++ compiler (kernel_cpu.available() is False), or for formats the kernels do not
decode (Q2_K, Q3_K), products use the torch dequantizers tile by tile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from torch import nn

from backends.quantization import kernel_cpu
from backends.quantization.dequantize import dequantize
from backends.quantization.formats import resolve_format

KERNEL_MAX_TOKENS = 16  # tokens per product up to which the block kernel beats dequant + GEMM
TILE_BYTES = 8 << 20  # float32 bytes of weight decoded per GEMM tile


def _check_blocks(blocks: torch.Tensor, ggml_type: GGMLQuantizationType, rows: int, cols: int) -> None:
    fmt = resolve_format(ggml_type)
    expected = (rows, fmt.bytes_per_row(cols))
    if blocks.dtype != torch.uint8 or tuple(blocks.shape) != expected:
        raise ValueError(f"{fmt.name} [{rows}, {cols}] needs uint8 blocks {expected}, "
                         f"got {blocks.dtype} {tuple(blocks.shape)}")


class BlockMatrix:
    """A [rows, cols] matrix held as GGML blocks [rows, bytes_per_row], decoded on demand."""

    def __init__(self, blocks: torch.Tensor, ggml_type: GGMLQuantizationType, rows: int, cols: int) -> None:
        ggml_type = GGMLQuantizationType(ggml_type)
        _check_blocks(blocks, ggml_type, rows, cols)
        self.blocks = blocks if blocks.is_contiguous() else blocks.contiguous()
        self.ggml_type = ggml_type
        self.rows, self.cols = rows, cols
        self.use_kernel = ggml_type in kernel_cpu.KERNEL_FORMATS and kernel_cpu.available()
        # The integer path runs at every batch size: each output is computed by the same
        # instructions whatever the batch, so a request's tokens never depend on its neighbours
        # (8-bit rounding would amplify a float GEMM's different summation order).
        self.int8 = self.use_kernel and int(ggml_type) in kernel_cpu.int8_formats()

    @property
    def parts(self) -> list["BlockMatrix"]:
        """The block matrices holding this one's weights (itself; see StackedBlockMatrices)."""
        return [self]

    def decode(self, blocks: torch.Tensor) -> torch.Tensor:
        """Some rows' blocks -> float32 [n, cols], bit-identical to dequantize()."""
        if self.use_kernel:
            return kernel_cpu.dequantize(blocks, self.ggml_type, self.cols)
        return dequantize(blocks, self.ggml_type, (blocks.shape[0], self.cols))

    def rows_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` [T] as float32 [T, cols]; only those rows are decoded."""
        return self.decode(self.blocks.index_select(0, ids))

    def times(self, x: torch.Tensor) -> torch.Tensor:
        """x float32 [T, cols] @ W^T -> float32 [T, rows]."""
        if self.int8 or (self.use_kernel and x.shape[0] <= KERNEL_MAX_TOKENS):
            return kernel_cpu.qmatmul(x, self.blocks, self.ggml_type, self.cols, self.int8)
        tile = max(1, TILE_BYTES // (4 * self.cols))
        if tile >= self.rows:
            return F.linear(x, self.decode(self.blocks))
        out = torch.empty(x.shape[0], self.rows, dtype=torch.float32)
        self.times_into(x, out, 0)
        return out

    def times_into(self, x: torch.Tensor, out: torch.Tensor, column: int) -> None:
        """out[:, column:column + rows] = x @ W^T, decoding the weight tile by tile."""
        tile = max(1, TILE_BYTES // (4 * self.cols))
        for start in range(0, self.rows, tile):
            stop = min(start + tile, self.rows)
            out[:, column + start:column + stop] = F.linear(x, self.decode(self.blocks[start:stop]))


class StackedBlockMatrices:
    """Several block matrices with the same number of columns, multiplied as one [sum rows, cols]
    matrix (Q, K and V; gate and up) without copying their blocks: the weights stay the file's
    bytes, each part keeps its own format (Q4_K_M mixes Q4_K and Q6_K within a layer)."""

    def __init__(self, parts: list[BlockMatrix]) -> None:
        if not parts or len({p.cols for p in parts}) != 1:
            raise ValueError("stacked block matrices need at least one part and equal column counts")
        self.parts = parts
        self.rows, self.cols = sum(p.rows for p in parts), parts[0].cols
        self.ggml_type = parts[0].ggml_type if len({p.ggml_type for p in parts}) == 1 else None
        self.use_kernel = all(p.use_kernel for p in parts)
        self.int8 = all(p.int8 for p in parts)
        self._blocks, self._types = [p.blocks for p in parts], [int(p.ggml_type) for p in parts]

    def times(self, x: torch.Tensor) -> torch.Tensor:
        """x float32 [T, cols] @ [W_1; W_2; ...]^T -> float32 [T, rows] (parts' outputs side by side)."""
        if self.int8 or (self.use_kernel and x.shape[0] <= KERNEL_MAX_TOKENS):
            return kernel_cpu.qmatmul_stacked(x, self._blocks, self._types, self.cols, self.int8)
        out = torch.empty(x.shape[0], self.rows, dtype=torch.float32)
        column = 0
        for part in self.parts:
            part.times_into(x, out, column)
            column += part.rows
        return out


class QuantizedLinear(nn.Module):
    """y = x W^T (+ b) with W in block format; computes in float32, returns x's dtype."""

    def __init__(self, matrix: BlockMatrix | StackedBlockMatrices, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.matrix = matrix
        self.in_features, self.out_features = matrix.cols, matrix.rows
        if bias is not None and tuple(bias.shape) != (matrix.rows,):
            raise ValueError(f"bias must have shape ({matrix.rows},), got {tuple(bias.shape)}")
        self.bias = None if bias is None else nn.Parameter(bias.float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.matrix.times(x.float())
        if self.bias is not None:
            y += self.bias
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        kind = self.matrix.ggml_type.name if self.matrix.ggml_type is not None else "mixed"
        return f"{kind}, in={self.in_features}, out={self.out_features}"


class QuantizedEmbedding(nn.Module):
    """Embedding lookup that decodes only the requested rows of a block-format table."""

    def __init__(self, matrix: BlockMatrix, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.matrix = matrix
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.matrix.rows_of(ids.reshape(-1))
        return rows if self.dtype == torch.float32 else rows.to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.matrix.ggml_type.name}, {self.matrix.rows} x {self.matrix.cols}"
