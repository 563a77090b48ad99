"""llama.cpp's scale searches (ggml-quants.c), vectorized over groups of weights.

Each function takes float32 x [G, n] (G independent groups of n weights) and returns
per-group results, doing in numpy float32 what the C code does for one group at a time:

    make_qx_quants   symmetric codes in [-nmax, nmax) around 0 (Q6_K, Q3_K, imatrix Q4_0/Q5_0)
    make_qkx2_quants asymmetric codes with a min, weighted least squares (Q4_K/Q5_K reference)
    make_qkx3_quants the same search as llama.cpp's imatrix path uses (Q4_K/Q5_K/Q4_1/Q5_1)
    make_qp_quants   non-negative codes for the sub-block scales and mins themselves

NOTE on fidelity: numpy evaluates the same float32 operations, but sums pairwise where C
sums left to right, and the C compiler may fuse multiply-adds; so a near-tie between two
candidate scales can go the other way. Both choices are then about equally good.
"""

from __future__ import annotations

import numpy as np

GROUP_MAX_EPS = np.float32(1e-15)  # llama.cpp: below this max |x| a group is all zero
_F = np.float32


def nearest_int(v: np.ndarray) -> np.ndarray:
    """Round half to even, as llama.cpp's nearest_int (the 1.5 * 2**23 trick) does."""
    return np.rint(v).astype(np.int32)


def _rows_sum(a: np.ndarray) -> np.ndarray:
    return a.sum(axis=-1, dtype=np.float32)


def make_qx_quants(x: np.ndarray, nmax: int, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric quantization of each group; rmse_type 1 (weights x**2 unless given).

    Returns (scale float32 [G], codes uint8 [G, n] in 0..2*nmax-1, i.e. l + nmax).
    Tries scales -(nmax + 0.1 * is) / max for is in -9..9 and keeps the best weighted fit.
    """
    num_groups = x.shape[0]
    ax = np.abs(x)
    first_max = np.argmax(ax, axis=1)  # the C loop keeps the first strictly larger |x|
    signed_max = x[np.arange(num_groups), first_max]
    amax = ax[np.arange(num_groups), first_max]
    live = amax >= GROUP_MAX_EPS
    safe_max = np.where(live, signed_max, _F(1))[:, None]
    w = x * x if weights is None else weights
    wx = w * x

    def codes_for(iscale: np.ndarray) -> np.ndarray:
        return np.clip(nearest_int(iscale * x), -nmax, nmax - 1).astype(np.float32)

    levels = codes_for(_F(-nmax) / safe_max)
    sumlx, suml2 = _rows_sum(wx * levels), _rows_sum(w * levels * levels)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, _F(0)).astype(np.float32)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        trial = codes_for(-(_F(nmax) + _F(0.1) * _F(step)) / safe_max)
        t_lx, t_l2 = _rows_sum(wx * trial), _rows_sum(w * trial * trial)
        better = (t_l2 > 0) & (t_lx * t_lx > best * t_l2)
        if better.any():
            levels = np.where(better[:, None], trial, levels)
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = np.where(better, t_lx / t_l2, scale).astype(np.float32)
            best = np.where(better, scale * t_lx, best).astype(np.float32)
    codes = np.where(live[:, None], levels + nmax, 0).astype(np.uint8)
    return np.where(live, scale, _F(0)).astype(np.float32), codes


def _asymmetric_search(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float,
                       nstep: int, clamp_before_rounding: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The body shared by make_qkx2_quants and make_qkx3_quants (use_mad false).

    Fits x ~ scale * l + min (min <= 0) by weighted least squares over nstep + 1 trial
    inverse scales (rmin + rdelta * step + nmax) / (max - min); each trial starts from the
    best (scale, min) so far, exactly as the C loop does.
    """
    lo = np.minimum(x.min(axis=1), _F(0))
    hi = x.max(axis=1)
    flat = hi <= lo  # qkx2 tests max == min: the same once min is clamped to <= 0
    sum_w = _rows_sum(weights)
    sum_x = _rows_sum(weights * x)
    span = np.where(flat, _F(1), hi - lo)
    iscale = _F(nmax) / span
    scale = (_F(1) / iscale).astype(np.float32)
    levels = np.clip(nearest_int(iscale[:, None] * (x - lo[:, None])), 0, nmax).astype(np.float32)
    diff = scale[:, None] * levels + lo[:, None] - x
    best_error = _rows_sum(weights * diff * diff)
    wx = weights * x
    for step in range(nstep + 1):
        span = np.where(flat, _F(1), hi - lo)
        iscale = (_F(rmin) + _F(rdelta) * _F(step) + _F(nmax)) / span
        with np.errstate(invalid="ignore", over="ignore"):
            v = iscale[:, None] * (x - lo[:, None])
            if clamp_before_rounding:  # qkx3: min may sit at max, so v can be inf or nan
                trial = np.where(v > 0, nearest_int(np.minimum(v, _F(nmax))), 0).astype(np.float32)
            else:
                trial = np.clip(nearest_int(v), 0, nmax).astype(np.float32)
        sum_l = _rows_sum(weights * trial)
        sum_l2 = _rows_sum(weights * trial * trial)
        sum_xl = _rows_sum(wx * trial)
        det = sum_w * sum_l2 - sum_l * sum_l
        with np.errstate(divide="ignore", invalid="ignore"):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            clamp = this_min > 0
            this_scale = np.where(clamp, sum_xl / sum_l2, this_scale).astype(np.float32)
            this_min = np.where(clamp, _F(0), this_min).astype(np.float32)
            diff = this_scale[:, None] * trial + this_min[:, None] - x
            error = _rows_sum(weights * diff * diff)
        take = (det > 0) & (error < best_error) & ~flat
        if take.any():
            levels = np.where(take[:, None], trial, levels)
            best_error = np.where(take, error, best_error)
            scale = np.where(take, this_scale, scale)
            lo = np.where(take, this_min, lo)
    levels = np.where(flat[:, None], _F(0), levels)
    scale = np.where(flat, _F(0), scale)
    return scale.astype(np.float32), (-lo).astype(np.float32), levels.astype(np.uint8)


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float,
                     nstep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scale [G], the_min [G] >= 0, codes uint8 [G, n] in 0..nmax): x ~ scale * q - the_min."""
    return _asymmetric_search(x, weights, nmax, rmin, rdelta, nstep, clamp_before_rounding=False)


def make_qkx3_quants(x: np.ndarray, weights: np.ndarray | None, nmax: int, rmin: float, rdelta: float,
                     nstep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As make_qkx2_quants, with weights x**2 when none are given and qkx3's safer rounding."""
    w = x * x if weights is None else weights
    return _asymmetric_search(x, w, nmax, rmin, rdelta, nstep, clamp_before_rounding=True)


def make_qp_quants(x: np.ndarray, weights: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative x [G, n] -> (scale [G], codes uint8 [G, n] in 0..nmax), weighted fit.

    Used for the 6-bit sub-block scales and mins of Q4_K/Q5_K with an importance matrix.
    """
    top = np.maximum(x.max(axis=1), _F(0))
    live = top >= GROUP_MAX_EPS
    safe_top = np.where(live, top, _F(1))[:, None]
    iscale = _F(nmax) / safe_top
    levels = nearest_int(iscale * x).astype(np.float32)  # NOTE: no clamp here, as in C
    diff = x - (_F(1) / iscale) * levels
    best_mse = _rows_sum(weights * diff * diff)
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (_F(0.1) * _F(step) + _F(nmax)) / safe_top
        trial = np.minimum(nearest_int(iscale_is * x), nmax).astype(np.float32)
        diff = x - (_F(1) / iscale_is) * trial
        mse = _rows_sum(weights * diff * diff)
        better = mse < best_mse
        best_mse = np.where(better, mse, best_mse)
        iscale = np.where(better[:, None], iscale_is, iscale)
    levels = np.minimum(nearest_int(iscale * x), nmax).astype(np.float32)
    sumlx = _rows_sum(weights * x * levels)
    suml2 = _rows_sum(weights * levels * levels)
    # Coordinate descent, one code at a time in order, as the C loop (5 passes at most; a
    # pass that changes nothing would change nothing again, so running all 5 is the same).
    for _ in range(5):
        for i in range(x.shape[1]):
            w, xi, li = weights[:, i], x[:, i], levels[:, i]
            slx = sumlx - w * xi * li
            sl2 = suml2 - w * li * li
            ok = (slx > 0) & (sl2 > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                new_l = np.minimum(nearest_int(np.where(ok, xi * sl2 / slx, _F(0))), nmax).astype(np.float32)
            slx_new = slx + w * xi * new_l
            sl2_new = sl2 + w * new_l * new_l
            take = ok & (new_l != li) & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new)
            levels[:, i] = np.where(take, new_l, li)
            sumlx = np.where(take, slx_new, sumlx)
            suml2 = np.where(take, sl2_new, suml2)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(live & (suml2 > 0), sumlx / suml2, _F(0)).astype(np.float32)
    codes = np.where(live[:, None], levels, 0).astype(np.uint8)
    return scale, codes
