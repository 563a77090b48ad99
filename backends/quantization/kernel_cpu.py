"""The compiled CPU kernels of the k-quant engine (kernel_qmatmul.cpp), built on first use.

    from backends.quantization import kernel_cpu
    if kernel_cpu.available():
        y = kernel_cpu.qmatmul(x_f32, blocks_u8, ggml_type, in_features)

torch.utils.cpp_extension compiles the C++ once per source version (about a minute with g++
and ninja) into TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions) and reuses the build
afterwards. Without a compiler the engine still runs, on the slower pure-torch paths of
quantized_linear.py; `available()` says which one is in use and `build_error()` why.
Set ROUTEGATE_NO_KERNELS=1 to force the pure-torch paths (tests compare both).
"""

from __future__ import annotations

import os

import torch
from gguf import GGMLQuantizationType

from backends.compiled_extension import CompiledExtension

_T = GGMLQuantizationType
# The formats kernel_qmatmul.cpp decodes; the others (Q2_K, Q3_K) use the torch dequantizers.
KERNEL_FORMATS = frozenset({_T.Q4_0, _T.Q4_1, _T.Q5_0, _T.Q5_1, _T.Q8_0, _T.Q4_K, _T.Q5_K, _T.Q6_K})

_HERE = os.path.dirname(__file__)
_EXTENSION = CompiledExtension("routegate_kernel_qmatmul", [os.path.join(_HERE, "kernel_qmatmul.cpp")],
                               headers=[*(os.path.join(_HERE, h) for h in ("kernel_decode.h", "kernel_int8.h", "kernel_int8_avx2.h",
                                                                    "kernel_int8_amx.h")),
                                        os.path.join(_HERE, "..", "amx_tiles.h")])


def available() -> bool:
    """True when the compiled kernels are loaded (building them now if needed)."""
    return _EXTENSION.available()


def build_error() -> str | None:
    """Why the kernels are not in use, or None when they are."""
    return _EXTENSION.build_error()


def int8_formats() -> frozenset[int]:
    """GGML types whose products run on the integer path (8-bit activations, integer dot
    products: CPUs with AVX2, using VNNI where present; see kernel_int8.h): empty without the kernels or on CPUs
    with neither."""
    if not available():
        return frozenset()
    return frozenset(int(t) for t in _EXTENSION.module().int8_formats())


def int8_amx_formats() -> frozenset[int]:
    """GGML types whose integer path runs on AMX tiles in this process (kernel_int8_amx.h: CPUs
    with AMX_INT8, the OS granting the tiles, ROUTEGATE_NO_AMX not 1; every int8 format but Q6_K)."""
    if not available():
        return frozenset()
    return frozenset(int(t) for t in _EXTENSION.module().int8_amx_formats())


def qmatmul(x: torch.Tensor, blocks: torch.Tensor, ggml_type: int, in_features: int,
            int8: bool = False) -> torch.Tensor:
    """x float32 [T, in] times the block-format matrix [out, in]^T -> float32 [T, out].

    int8: multiply 8-bit quantized activations (fake_quantize(x)) with the weights' integer
    codes instead of x with the decoded float weights."""
    return _EXTENSION.module().qmatmul(x, blocks, int(ggml_type), in_features, int8)


def qmatmul_stacked(x: torch.Tensor, blocks: list[torch.Tensor], ggml_types: list[int],
                    in_features: int, int8: bool = False) -> torch.Tensor:
    """x float32 [T, in] times several block-format matrices [out_i, in]^T, one call ->
    float32 [T, sum out_i] (each part's columns side by side, bit-identical to qmatmul)."""
    return _EXTENSION.module().qmatmul_stacked(x, blocks, [int(t) for t in ggml_types], in_features, int8)


def fake_quantize(x: torch.Tensor) -> torch.Tensor:
    """The activations the integer path multiplies, as float32 [T, in]: each 32 values rounded
    to 8 bits with scale max|x| / 127 (llama.cpp's Q8_0 rule)."""
    return _EXTENSION.module().fake_quantize(x)


def dequantize(blocks: torch.Tensor, ggml_type: int, in_features: int) -> torch.Tensor:
    """Block bytes [rows, row_bytes] -> float32 [rows, in], bit-identical to dequantize()."""
    return _EXTENSION.module().dequantize(blocks, int(ggml_type), in_features)
