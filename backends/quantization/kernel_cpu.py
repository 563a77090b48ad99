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

import hashlib
import os
import platform
import threading
from types import ModuleType

import torch
from gguf import GGMLQuantizationType

_T = GGMLQuantizationType
# The formats kernel_qmatmul.cpp decodes; the others (Q2_K, Q3_K) use the torch dequantizers.
KERNEL_FORMATS = frozenset({_T.Q4_0, _T.Q4_1, _T.Q5_0, _T.Q5_1, _T.Q8_0, _T.Q4_K, _T.Q5_K, _T.Q6_K})

_HERE = os.path.dirname(__file__)
_SOURCE = os.path.join(_HERE, "kernel_qmatmul.cpp")
_HEADER = os.path.join(_HERE, "kernel_decode.h")
_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None
_tried = False


def _build_name() -> str:
    """Extension name keyed by both source files and the CPU's flags.

    NOTE: torch rebuilds when a listed source changes but not when a header it includes does,
    and -march=native code must not be reused on another CPU through a shared cache folder.
    """
    digest = hashlib.sha256()
    for path in (_SOURCE, _HEADER):
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(platform.machine().encode())
    try:
        with open("/proc/cpuinfo") as f:
            digest.update(next((line for line in f if line.startswith("flags")), "").encode())
    except OSError:
        pass
    return f"routegate_kernel_qmatmul_{digest.hexdigest()[:12]}"


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    # -march=native: AVX-512 where the CPU has it (the build is per machine anyway);
    # -fopenmp: at::parallel_for runs on torch's own OpenMP pool (same libgomp.so.1 soname).
    return cpp_extension.load(
        name=_build_name(),
        sources=[_SOURCE],
        extra_cflags=["-O3", "-march=native", "-std=c++20", "-fopenmp", "-mprefer-vector-width=512"],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def _load() -> ModuleType | None:
    global _module, _error, _tried
    with _lock:
        if not _tried:
            _tried = True
            if os.environ.get("ROUTEGATE_NO_KERNELS") == "1":
                _error = "disabled by ROUTEGATE_NO_KERNELS=1"
            else:
                try:
                    _module = _build()
                except Exception as exc:  # no compiler, no ninja, no headers: fall back, say why
                    _error = f"{type(exc).__name__}: {exc}"
    return _module


def available() -> bool:
    """True when the compiled kernels are loaded (building them now if needed)."""
    return _load() is not None


def build_error() -> str | None:
    """Why the kernels are not in use, or None when they are."""
    _load()
    return _error


def _require() -> ModuleType:
    module = _load()
    if module is None:
        raise RuntimeError(f"the k-quant CPU kernels are not available: {_error}")
    return module


def qmatmul(x: torch.Tensor, blocks: torch.Tensor, ggml_type: int, in_features: int) -> torch.Tensor:
    """x float32 [T, in] times the block-format matrix [out, in]^T -> float32 [T, out]."""
    return (_module or _require()).qmatmul(x, blocks, int(ggml_type), in_features)


def qmatmul_stacked(x: torch.Tensor, blocks: list[torch.Tensor], ggml_types: list[int],
                    in_features: int) -> torch.Tensor:
    """x float32 [T, in] times several block-format matrices [out_i, in]^T, one call ->
    float32 [T, sum out_i] (each part's columns side by side, bit-identical to qmatmul)."""
    return (_module or _require()).qmatmul_stacked(x, blocks, [int(t) for t in ggml_types], in_features)


def dequantize(blocks: torch.Tensor, ggml_type: int, in_features: int) -> torch.Tensor:
    """Block bytes [rows, row_bytes] -> float32 [rows, in], bit-identical to dequantize()."""
    return (_module or _require()).dequantize(blocks, int(ggml_type), in_features)
