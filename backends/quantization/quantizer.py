"""Quantize a dense float32 matrix to GGML bytes: `quantize_tensor`.

    raw = quantize_tensor(weights, "Q4_K")                      # uint8 [rows, bytes_per_row]
    raw = quantize_tensor(weights, "Q4_K", importance=imatrix)  # imatrix: one weight per column

The per-format quantizers (quantizer_kquants.py, quantizer_legacy.py) follow llama.cpp's
choices of scales; this module validates, dispatches and walks big tensors in chunks of
rows so the float32 temporaries of the scale searches stay small and in cache.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGMLQuantizationType

from backends.quantization import quantizer_kquants as kq
from backends.quantization import quantizer_legacy as lq
from backends.quantization.formats import QuantFormat, resolve_format
from backends.quantization.pack_blocks import pack_blocks
from backends.quantization.pack_fields import BlockCodes

Quantizer = Callable[[np.ndarray, "np.ndarray | None"], BlockCodes]

_T = GGMLQuantizationType
QUANTIZERS: dict[GGMLQuantizationType, Quantizer] = {
    _T.Q4_0: lq.quantize_q4_0,
    _T.Q4_1: lq.quantize_q4_1,
    _T.Q5_0: lq.quantize_q5_0,
    _T.Q5_1: lq.quantize_q5_1,
    _T.Q8_0: lq.quantize_q8_0,
    _T.Q4_K: kq.quantize_q4_k,
    _T.Q5_K: kq.quantize_q5_k,
    _T.Q6_K: kq.quantize_q6_k,
}
_DENSE = {_T.F32: np.float32, _T.F16: np.float16}

# Weights per chunk. NOTE: the k-quant searches keep ~10 float32 temporaries the size of
# the chunk alive; 2**16 weights (256 KiB each) keeps them in L2 on this box.
_CHUNK_WEIGHTS = 1 << 16


def quantize_tensor(
    weights: np.ndarray,
    ggml_type: int | str | GGMLQuantizationType | QuantFormat,
    importance: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Encode float32 `weights` [..., cols] as `ggml_type`; uint8 [rows, bytes_per_row].

    F32 and F16 are plain casts (returned as their own dtype, [rows, cols]).
    importance: optional float32 [cols], llama.cpp's importance-matrix entry for this tensor.
    progress: called with the number of rows finished after each chunk.
    """
    fmt = resolve_format(ggml_type)
    w = np.asarray(weights)
    if w.ndim == 0 or w.size == 0:
        raise ValueError(f"weights must be a non-empty array, got shape {w.shape}")
    cols = w.shape[-1]
    w = w.reshape(-1, cols)
    if fmt.ggml_type in _DENSE:
        return w.astype(_DENSE[fmt.ggml_type])
    if fmt.ggml_type not in QUANTIZERS:
        raise ValueError(f"quantizing to {fmt.name} is not supported (supported: "
                         f"{', '.join(t.name for t in QUANTIZERS)}, F32, F16)")
    if cols % fmt.block_size:
        raise ValueError(f"{fmt.name}: rows of {cols} weights are not a multiple of the block size {fmt.block_size}")
    if importance is not None:
        importance = np.asarray(importance, dtype=np.float32).reshape(-1)
        if importance.shape != (cols,):
            raise ValueError(f"importance must have one weight per column ({cols}), got {importance.shape[0]}")
    if not np.isfinite(w).all():
        raise ValueError("weights must be finite (found inf or nan)")
    quantize = QUANTIZERS[fmt.ggml_type]
    out = np.empty((w.shape[0], fmt.bytes_per_row(cols)), dtype=np.uint8)
    step = max(1, _CHUNK_WEIGHTS // cols)
    for start in range(0, w.shape[0], step):
        chunk = np.ascontiguousarray(w[start:start + step], dtype=np.float32)
        out[start:start + step] = pack_blocks(quantize(chunk, importance)).reshape(chunk.shape[0], -1)
        if progress is not None:
            progress(chunk.shape[0])
    return out
