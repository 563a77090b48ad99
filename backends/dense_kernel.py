"""The compiled CPU product of the full-precision engine for a few tokens (dense_kernel.cpp).

    from backends import dense_kernel
    if dense_kernel.available():
        y = dense_kernel.linear(x, weight, bias)   # x [T, K], W [N, K] bfloat16 or float32

On CPUs with AVX512_BF16, bfloat16 weights whose rows come in multiples of 16 are instead packed
once at load (pack(): 16-row blocks, two columns at a time) and multiplied by linear_packed():
one sequential stream per block, each token's 16 outputs in one register, no horizontal sums
(dense_kernel_packed.h). On the Zen 4 EPYC that took SmolLM2's bfloat16 step at 16 concurrent
requests from 303 to 370 tok/s (2026-12-07). On CPUs with AMX-BF16 the packed weights go
straight into AMX tiles instead (dense_kernel_amx.h: the packed block is AMX's B operand as it
lies); on the 2-core Xeon, 2 threads, weights from DRAM, ms per call, AMX / vdpbf16ps / F.linear:

    SmolLM2 qkv 960x576       T=1 0.052/0.064/0.133  T=16 0.052/0.267/0.135  T=512 0.40/3.24/0.41
    SmolLM2 gate_up 3072x576  T=1 0.151/0.195/0.322  T=16 0.154/0.821/0.350  T=512 1.20/10.2/1.17
    SmolLM2 lm_head 49152x576 T=1 2.19/2.34/4.19     T=16 2.30/11.1/4.63     T=512 41.2/178/36.4

The table below is the row-major kernel.

Built on first use like the other kernels (compiled_extension.py); without a compiler, or with
ROUTEGATE_NO_KERNELS=1 or ROUTEGATE_NO_DENSE_KERNEL=1, DenseLinear keeps F.linear.

On CPUs with AVX2 and FMA but no AVX-512 (the 2-core Zen 3) the same loops run 8 lanes wide,
2 tokens a pass; there bfloat16 measured 1.2-5x faster than F.linear at 1-16 tokens (F.linear's
bf16 path has no fast kernel there). The table below is the AVX-512 machine.

Measured on this project's 2-core AVX-512 EPYC (AVX512_BF16, no AMX), torch 2.13, one thread
(the other core busy with other work), CPU ms per call while cycling through > 250 MB of
distinct matrices so that every weight comes from DRAM, as in the engine; kernel / F.linear,
interleaved in one process, best of 3 rounds:

    bfloat16 [N, K]          T=1         T=2         T=4         T=8         T=16        T=32
    SmolLM2 qkv 960x576      0.10/0.16   0.12/0.17   0.12/0.18   0.15/0.20   0.21/0.24   0.32/0.31
    SmolLM2 o 576x576        0.06/0.10   0.07/0.10   0.07/0.10   0.09/0.12   0.12/0.14   0.18/0.19
    SmolLM2 gate_up 3072x576 0.31/0.45   0.37/0.45   0.39/0.49   0.47/0.53   0.66/0.70   1.05/0.95
    SmolLM2 down 576x1536    0.13/0.18   0.15/0.16   0.16/0.18   0.19/0.21   0.26/0.27   0.41/0.39
    SmolLM2 lm_head 49152x576  5.0/6.5   5.7/6.6     6.1/7.1     7.4/8.0     10.4/10.3   15.7/14.4
    Gemma qkv 1536x640       0.17/0.24   0.19/0.25   0.20/0.27   0.25/0.30   0.34/0.37   0.52/0.50
    Gemma o 640x1024         0.10/0.15   0.11/0.15   0.12/0.16   0.16/0.19   0.21/0.23   0.32/0.32
    Gemma gate_up 4096x640   0.42/0.61   0.49/0.62   0.54/0.67   0.66/0.75   0.91/0.95   1.38/1.31
    Gemma down 640x2048      0.16/0.26   0.18/0.23   0.19/0.25   0.23/0.29   0.33/0.38   0.54/0.56
    Gemma lm_head 262144x640   28/38     35/41       37/43       45/49       61/61       91/85
    float32
    SmolLM2 qkv 960x576      0.16/0.20   0.18/0.29   0.20/0.25   0.26/0.29   0.37/0.37   0.60/0.54
    SmolLM2 o 576x576        0.10/0.12   0.11/0.17   0.12/0.15   0.15/0.18   0.23/0.23   0.36/0.32
    SmolLM2 gate_up 3072x576 0.52/0.62   0.57/1.15   0.63/0.82   0.82/0.94   1.20/1.23   1.94/1.83
    SmolLM2 down 576x1536    0.21/0.24   0.24/0.35   0.27/0.33   0.35/0.40   0.52/0.54   0.87/0.79
    SmolLM2 lm_head 49152x576  8.4/10.0  9.1/22.3    10.2/16.6   13.4/18.9   19.3/24.2   31.2/33.2
    Gemma qkv 1536x640       0.28/0.32   0.33/0.52   0.36/0.41   0.47/0.49   0.68/0.65   1.09/0.94
    Gemma o 640x1024         0.17/0.19   0.18/0.28   0.19/0.27   0.26/0.33   0.38/0.43   0.65/0.62
    Gemma gate_up 4096x640   0.77/0.86   0.90/1.77   1.00/1.30   1.32/1.56   1.85/1.97   2.93/2.89
    Gemma down 640x2048      0.32/0.31   0.34/0.51   0.39/0.50   0.49/0.60   0.74/0.82   1.22/1.20
    Gemma lm_head 262144x640   49/58     59/130      62/104      82/121      118/152     188/217

so DenseLinear uses the kernel up to 16 tokens (dense_weights.KERNEL_MAX_TOKENS): at T=16 it is
level or ahead on every shape, at T=32 F.linear's GEMM is ahead on most. At T=1 one thread
streams ~11-12 GB/s (the lm_heads) against F.linear's ~8.7. Two-thread timings on this machine
were dominated by other processes holding the second core and are not in the table.
`bench/bench_dense_kernel.py` prints this table.
"""

from __future__ import annotations

import functools
import os

import torch

from backends.compiled_extension import CompiledExtension

_HERE = os.path.dirname(__file__)
_EXTENSION = CompiledExtension("routegate_dense_kernel", [os.path.join(_HERE, "dense_kernel.cpp")],
                               headers=[os.path.join(_HERE, "dense_kernel_packed.h"),
                                        os.path.join(_HERE, "dense_kernel_amx.h"), os.path.join(_HERE, "amx_tiles.h")])

# Weight bytes below which one thread does the whole product: waking the second costs more.
GRAIN_BYTES = 256 << 10


def available() -> bool:
    """True when the compiled kernel is loaded (building it now if needed)."""
    if os.environ.get("ROUTEGATE_NO_DENSE_KERNEL") == "1":
        return False
    return _EXTENSION.available()


def build_error() -> str | None:
    """Why the kernel is not in use, or None when it is."""
    if os.environ.get("ROUTEGATE_NO_DENSE_KERNEL") == "1":
        return "disabled by ROUTEGATE_NO_DENSE_KERNEL=1"
    return _EXTENSION.build_error()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           grain_bytes: int = GRAIN_BYTES) -> torch.Tensor:
    """x [T, K] W [N, K]^T (+ bias [N]) -> [T, N] in W's dtype (x must have it too), summed in
    float32 and rounded once: F.linear up to the order of the additions."""
    return _EXTENSION.module().linear(x, weight, bias, grain_bytes)


PACK_ROWS = 16  # rows per block of the packed bfloat16 layout (dense_kernel_packed.h)


def packed_supported() -> bool:
    """True when bfloat16 products can use packed weights (the kernel built, AVX512_BF16)."""
    return available() and bool(_EXTENSION.module().packed_supported())


@functools.cache  # fixed for the process (the kernel reads the switch once); linear_packed asks per call
def amx_supported() -> bool:
    """True when packed products run on AMX tiles (dense_kernel_amx.h): the CPU has AMX_BF16, the
    OS grants the tile state, and ROUTEGATE_NO_AMX is not 1. Decided once per process, so every
    product of a process takes one path and a request's outputs never depend on its batch."""
    return packed_supported() and bool(_EXTENSION.module().amx_supported())


def can_pack(weight: torch.Tensor) -> bool:
    return (weight.dtype == torch.bfloat16 and weight.dim() == 2 and weight.shape[0] % PACK_ROWS == 0
            and weight.shape[1] % 2 == 0 and weight.shape[0] > 0 and packed_supported())


def pack(weight: torch.Tensor) -> torch.Tensor:
    """W bfloat16 [N, K] -> [N / 16, K / 2, 16, 2]: element (b, p, r, j) is W[16 b + r, 2 p + j]."""
    n, k = weight.shape
    return weight.reshape(n // PACK_ROWS, PACK_ROWS, k // 2, 2).permute(0, 2, 1, 3).contiguous()


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack(): W [N, K] (a copy)."""
    blocks, pairs = packed.shape[:2]
    return packed.permute(0, 2, 1, 3).reshape(blocks * PACK_ROWS, pairs * 2)


def packed_rows(packed: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows `ids` [T] of the packed matrix as [T, K]: an embedding lookup on a tied LM head."""
    return packed[ids // PACK_ROWS, :, ids % PACK_ROWS, :].reshape(ids.shape[0], -1)


def linear_packed(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None,
                  grain_bytes: int = GRAIN_BYTES, amx: bool | None = None) -> torch.Tensor:
    """x bfloat16 [T, K] times pack(W)^T (+ bias [N]) -> bfloat16 [T, N], summed in float32: on
    AMX tiles when K % 32 == 0 and `amx` (default: amx_supported()), else with vdpbf16ps."""
    use_amx = amx_supported() if amx is None else amx and amx_supported()
    return _EXTENSION.module().linear_packed(x, packed, bias, grain_bytes, use_amx)
