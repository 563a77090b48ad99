"""Dense float32 rows -> Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 codes, as llama.cpp chooses them.

Without an importance matrix: ggml-quants.c's quantize_row_*_ref (scale from the absolute
max, or from min and max for the _1 types; codes by truncating x / d + offset). With one:
quantize_row_*_impl, a weighted search per 32-weight block (make_qx_quants for the
symmetric _0 types, make_qkx3_quants for the _1 types) with weights
importance * sqrt(sigma2 + x**2), sigma2 the mean square of the whole row. Q8_0 ignores
the importance matrix, as llama.cpp does.

Each function takes x float32 [rows, cols] (cols a multiple of 32) and an optional
importance vector [cols].
"""

from __future__ import annotations

import numpy as np

from backends.quantization.formats import Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, QuantFormat
from backends.quantization.pack_fields import BlockCodes
from backends.quantization.quantizer_search import make_qkx3_quants, make_qx_quants

_F = np.float32
_QK = 32


def _row_weights(x: np.ndarray, importance: np.ndarray) -> np.ndarray:
    """importance[col] * sqrt(sigma2 + x**2) per weight, sigma2 = the row's mean square."""
    sigma2 = np.sum(x * x, axis=1, dtype=np.float32) / _F(x.shape[1])
    return importance.astype(np.float32)[None, :] * np.sqrt(sigma2[:, None] + x * x)


def _signed_absmax(xb: np.ndarray) -> np.ndarray:
    """Per block the value of largest |x| (the first one on ties), keeping its sign."""
    first = np.argmax(np.abs(xb), axis=1)
    return xb[np.arange(xb.shape[0]), first]


def _truncate(v: np.ndarray) -> np.ndarray:
    """C's (int8_t)/(uint8_t) cast of a float: toward zero."""
    return np.trunc(v).astype(np.int32)


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d != 0, _F(1) / np.where(d != 0, d, _F(1)), _F(0)).astype(np.float32)


def _symmetric(x: np.ndarray, importance: np.ndarray | None, fmt: QuantFormat, half: int) -> BlockCodes:
    xb = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, _QK)
    if importance is not None:
        w = _row_weights(np.asarray(x, dtype=np.float32), importance).reshape(-1, _QK)
        scale, codes = make_qx_quants(xb, half, w)
        return BlockCodes(fmt, codes, scale.astype(np.float16))
    d = (_signed_absmax(xb) / _F(-half)).astype(np.float32)
    q = _truncate(xb * _inverse(d)[:, None] + _F(half + 0.5))
    return BlockCodes(fmt, np.minimum(q, 2 * half - 1).astype(np.uint8), d.astype(np.float16))


def _with_min(x: np.ndarray, importance: np.ndarray | None, fmt: QuantFormat, nmax: int) -> BlockCodes:
    xb = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, _QK)
    if importance is not None:
        w = _row_weights(np.asarray(x, dtype=np.float32), importance).reshape(-1, _QK)
        scale, the_min, codes = make_qkx3_quants(xb, w, nmax, -0.9, 0.05, 36)
        return BlockCodes(fmt, codes, scale.astype(np.float16), m=(-the_min).astype(np.float16))
    lo, hi = xb.min(axis=1), xb.max(axis=1)
    d = ((hi - lo) / _F(nmax)).astype(np.float32)
    q = _truncate((xb - lo[:, None]) * _inverse(d)[:, None] + _F(0.5))
    return BlockCodes(fmt, np.minimum(q, nmax).astype(np.uint8), d.astype(np.float16), m=lo.astype(np.float16))


def quantize_q4_0(x: np.ndarray, importance: np.ndarray | None = None) -> BlockCodes:
    return _symmetric(x, importance, Q4_0, 8)


def quantize_q5_0(x: np.ndarray, importance: np.ndarray | None = None) -> BlockCodes:
    return _symmetric(x, importance, Q5_0, 16)


def quantize_q4_1(x: np.ndarray, importance: np.ndarray | None = None) -> BlockCodes:
    return _with_min(x, importance, Q4_1, 15)


def quantize_q5_1(x: np.ndarray, importance: np.ndarray | None = None) -> BlockCodes:
    return _with_min(x, importance, Q5_1, 31)


def quantize_q8_0(x: np.ndarray, importance: np.ndarray | None = None) -> BlockCodes:
    """Q8_0: d = max|x| / 127, codes round(x / d) half away from zero (C's roundf)."""
    del importance  # llama.cpp's quantize_q8_0 ignores it too
    xb = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, _QK)
    d = (np.abs(xb).max(axis=1) / _F(127)).astype(np.float32)
    v = xb * _inverse(d)[:, None]
    t = np.trunc(v)
    q = t + np.where(np.abs(v - t) >= _F(0.5), np.sign(v), _F(0))
    return BlockCodes(Q8_0, q.astype(np.int8), d.astype(np.float16))
