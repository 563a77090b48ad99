"""Dense float32 rows -> Q4_K, Q5_K and Q6_K codes, choosing scales as llama.cpp does.

Without an importance matrix these follow ggml-quants.c's quantize_row_q{4,5,6}_K_ref
(what llama-quantize runs without --imatrix); with one, quantize_row_q{4,5,6}_K_impl.

    Q4_K/Q5_K  per 32-weight sub-block a weighted least-squares fit x ~ scale * q - min
               (make_qkx2_quants; weights av_x + |x|), then the 8 scales and 8 mins are
               themselves quantized to 6 bits against the block's fp16 d and dmin, and every
               weight is re-rounded against the scale it will really be decoded with.
    Q6_K       per 16-weight sub-block a symmetric fit (make_qx_quants, weights x**2), the
               16 scales to int8 against fp16 d, then the same re-rounding.

Then one step llama.cpp does not take (refine=True, the default): with the block's fp16 d
(and dmin) fixed, each sub-block tries its neighbouring integer scales (and mins) and keeps
the one with the least weighted squared error, using the very weights the search used.
The unrefined choice is among the candidates, so this never does worse; llama.cpp's own
choice differs from ours only at near-ties of its float searches, a step or two away, so
it is usually among them too. refine=False reproduces llama.cpp (tests compare the bytes).

Each function takes x float32 [rows, cols] (cols a multiple of 256) and an optional
importance vector [cols] (llama.cpp's imatrix entry for the tensor: one weight per column).
"""

from __future__ import annotations

import numpy as np

from backends.quantization.formats import Q4_K, Q5_K, Q6_K, QK_K
from backends.quantization.pack_fields import BlockCodes
from backends.quantization.quantizer_search import (
    GROUP_MAX_EPS,
    make_qkx2_quants,
    make_qkx3_quants,
    make_qp_quants,
    make_qx_quants,
    nearest_int,
)

_F = np.float32


def _fp16(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16)  # round to nearest even, as GGML_FP32_TO_FP16 (F16C)


def _blocks(x: np.ndarray, importance: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """x [rows, cols] -> [num_blocks, 256]; importance [cols] -> matching [num_blocks, 256]."""
    rows, cols = x.shape
    xb = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK_K)
    if importance is None:
        return xb, None
    qw = np.broadcast_to(importance.astype(np.float32).reshape(1, cols), (rows, cols)).reshape(-1, QK_K)
    return xb, qw


def _requantize(x: np.ndarray, levels: np.ndarray, factor: np.ndarray, offset: np.ndarray | None,
                low: int, high: int) -> np.ndarray:
    """Re-round every weight against its decoded sub-block scale (and min).

    x [n, S, k]; levels [n, S, k] from the search; factor [n, S] = fp16(d) * scale code;
    offset [n, S] = fp16(dmin) * min code or None. Sub-blocks whose factor is 0 keep the
    search's codes, as llama.cpp's `if (!d) continue;` does.
    """
    live = factor != 0
    safe = np.where(live, factor, _F(1))[..., None]
    shifted = x if offset is None else x + offset[..., None]
    v = np.clip(shifted / safe, _F(low - 1), _F(high + 1))  # in range for nearest_int
    fresh = np.clip(nearest_int(v), low, high)
    return np.where(live[..., None], fresh, levels)


def _weighted_error(x: np.ndarray, w: np.ndarray, codes: np.ndarray, factor: np.ndarray,
                    offset: np.ndarray | None) -> np.ndarray:
    """Per sub-block sum of w * (decoded - x)**2, decoding as ggml does: factor * q - offset."""
    decoded = factor[..., None] * codes.astype(np.float32)
    if offset is not None:
        decoded = decoded - offset[..., None]
    diff = decoded - x
    return np.sum(w * diff * diff, axis=-1, dtype=np.float32)


def _refine(x: np.ndarray, w: np.ndarray, levels: np.ndarray, d: np.ndarray, sc: np.ndarray,
            dmin: np.ndarray | None, mn: np.ndarray | None, sc_range: tuple[int, int], low: int, high: int,
            steps: range) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Best (scale code, min code) per sub-block within `steps` of the current ones.

    x, w, levels [n, S, k]; d, dmin float32 [n]; sc, mn int [n, S]. Candidates are tried
    current first, and only a strictly smaller error replaces it. Returns (sc, mn, codes).
    """
    def encode(cand_sc: np.ndarray, cand_mn: np.ndarray | None):
        factor = d[:, None] * cand_sc.astype(np.float32)
        offset = None if cand_mn is None else dmin[:, None] * cand_mn.astype(np.float32)
        codes = _requantize(x, levels, factor, offset, low, high)
        return codes, _weighted_error(x, w, codes, factor, offset)

    best_codes, best_err = encode(sc, mn)
    best_sc, best_mn = sc, mn
    min_steps = steps if mn is not None else range(1)
    for a in steps:
        for b in min_steps:
            if a == 0 and b == 0:
                continue
            cand_sc = np.clip(sc + a, *sc_range)
            cand_mn = None if mn is None else np.clip(mn + b, 0, 63)
            codes, err = encode(cand_sc, cand_mn)
            take = err < best_err
            if take.any():
                best_err = np.where(take, err, best_err)
                best_sc = np.where(take, cand_sc, best_sc)
                best_mn = None if mn is None else np.where(take, cand_mn, best_mn)
                best_codes = np.where(take[..., None], codes, best_codes)
    return best_sc, best_mn, best_codes


def _quantize_with_min(x: np.ndarray, importance: np.ndarray | None, nmax: int, fmt,
                       ref_search: tuple[float, float, int], refine: bool) -> BlockCodes:
    xb, qw = _blocks(x, importance)
    n = xb.shape[0]
    xs = xb.reshape(n, 8, 32)
    if qw is None:
        av_x = np.sqrt(np.sum(xs * xs, axis=2, dtype=np.float32) / _F(32))
        w = av_x[..., None] + np.abs(xs)
        scale, the_min, levels = make_qkx2_quants(xs.reshape(-1, 32), w.reshape(-1, 32), nmax, *ref_search)
        scales, mins = scale.reshape(n, 8), the_min.reshape(n, 8)
        max_scale = np.maximum(scales.max(axis=1), _F(0))
        max_min = np.maximum(mins.max(axis=1), _F(0))
        with np.errstate(divide="ignore"):
            inv_scale = np.where(max_scale > 0, _F(63) / max_scale, _F(0))
            inv_min = np.where(max_min > 0, _F(63) / max_min, _F(0))
        # NOTE: C stores nearest_int in a uint8_t before MIN(63, .): negatives wrap the same way.
        ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
        lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
        d, dmin = _fp16(max_scale / _F(63)), _fp16(max_min / _F(63))
    else:
        sigma2 = _F(2) * np.sum(xb * xb, axis=1, dtype=np.float32) / _F(QK_K)
        w = (qw * np.sqrt(sigma2[:, None] + xb * xb)).reshape(n, 8, 32)
        sum_w = np.sum(w, axis=2, dtype=np.float32)
        scale, the_min, levels = make_qkx3_quants(xs.reshape(-1, 32), w.reshape(-1, 32), nmax, -0.9, 0.05, 36)
        d_block, ls = make_qp_quants(scale.reshape(n, 8), sum_w, 63)
        m_block, lm = make_qp_quants(the_min.reshape(n, 8), sum_w, 63)
        d, dmin = _fp16(d_block), _fp16(m_block)
    d32, dmin32 = d.astype(np.float32), dmin.astype(np.float32)
    levels = levels.reshape(n, 8, 32).astype(np.int32)
    if refine:
        ls, lm, codes = _refine(xs, w, levels, d32, ls.astype(np.int32), dmin32, lm.astype(np.int32),
                                (0, 63), 0, nmax, range(-1, 2))
    else:
        codes = _requantize(xs, levels, d32[:, None] * ls, dmin32[:, None] * lm, 0, nmax)
    return BlockCodes(fmt, codes.reshape(n, QK_K).astype(np.uint8), d, dmin,
                      scales=ls.astype(np.uint8), mins=lm.astype(np.uint8))


def quantize_q4_k(x: np.ndarray, importance: np.ndarray | None = None, refine: bool = True) -> BlockCodes:
    """Rows [r, c] -> Q4_K BlockCodes [r * c / 256 blocks]."""
    return _quantize_with_min(x, importance, 15, Q4_K, ref_search=(-1.0, 0.1, 20), refine=refine)


def quantize_q5_k(x: np.ndarray, importance: np.ndarray | None = None, refine: bool = True) -> BlockCodes:
    """Rows [r, c] -> Q5_K BlockCodes."""
    return _quantize_with_min(x, importance, 31, Q5_K, ref_search=(-0.5, 0.1, 15), refine=refine)


def quantize_q6_k(x: np.ndarray, importance: np.ndarray | None = None, refine: bool = True) -> BlockCodes:
    """Rows [r, c] -> Q6_K BlockCodes (importance, when given, weighs the fit directly)."""
    xb, qw = _blocks(x, importance)
    n = xb.shape[0]
    scale, levels = make_qx_quants(xb.reshape(-1, 16), 32, None if qw is None else qw.reshape(-1, 16))
    scales = scale.reshape(n, 16)
    abs_scales = np.abs(scales)
    first = np.argmax(abs_scales, axis=1)  # the C loop keeps the first strictly larger |scale|
    max_scale = scales[np.arange(n), first]
    live = abs_scales[np.arange(n), first] >= GROUP_MAX_EPS
    with np.errstate(divide="ignore"):
        iscale = np.where(live, _F(-128) / np.where(live, max_scale, _F(1)), _F(0)).astype(np.float32)
        d = _fp16(np.where(live, _F(1) / np.where(live, iscale, _F(1)), _F(0)))
    sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
    signed_levels = levels.reshape(n, 16, 16).astype(np.int32) - 32
    xs = xb.reshape(n, 16, 16)
    d32 = d.astype(np.float32)
    if refine:
        w = xs * xs if qw is None else qw.reshape(n, 16, 16)  # the weights make_qx_quants used
        sc, _, codes = _refine(xs, w, signed_levels, d32, sc.astype(np.int32), None, None, (-128, 127),
                               -32, 31, range(-5, 6))
    else:
        codes = _requantize(xs, signed_levels, d32[:, None] * sc.astype(np.float32), None, -32, 31)
    # An all-zero block is written as zero bytes: codes 0, scales 0, d 0.
    codes = np.where(live[:, None, None], codes + 32, 0).reshape(n, QK_K).astype(np.uint8)
    sc = np.where(live[:, None], sc, 0).astype(np.int8)
    return BlockCodes(Q6_K, codes, np.where(live, d, np.float16(0)), scales=sc)
