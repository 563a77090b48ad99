"""Pack and unpack the 256-weight k-quant super-blocks: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.

Layouts (bytes, in order; ggml-common.h):
    Q2_K  scales:16 (sc | mn << 4), qs:64, d, dmin
    Q3_K  hmask:32, qs:64, scales:12 (6-bit, packed), d
    Q4_K  d, dmin, scales:12 (6-bit sc and mn, packed), qs:128
    Q5_K  d, dmin, scales:12, qh:32, qs:128
    Q6_K  ql:128, qh:64, scales:int8*16, d
Quant bits are spread so that one byte column serves 2, 4 or 8 rows of 32 weights; the
index arithmetic of each field is noted where it is unpacked.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from backends.quantization.formats import QuantFormat
from backends.quantization.pack_fields import (
    BlockCodes,
    check_range,
    fp16_bytes,
    fp16_column,
    join_fields,
    split_fields,
)


def unpack_scale_min_k4_np(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes -> (8 six-bit scales, 8 six-bit mins), uint8 [n, 8] each.

    Bytes 0-3: scales 0-3 in the low 6 bits, top 2 bits of scales 4-7; bytes 4-7 the same
    for mins; bytes 8-11: low nibbles of scales 4-7 and (high nibble) of mins 4-7.
    """
    lo_sc, lo_mn, nib = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    sc = np.concatenate([lo_sc & 0x3F, (nib & 0x0F) | ((lo_sc >> 6) << 4)], axis=1)
    mn = np.concatenate([lo_mn & 0x3F, (nib >> 4) | ((lo_mn >> 6) << 4)], axis=1)
    return sc, mn


def pack_scale_min_k4_np(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """The inverse of unpack_scale_min_k4_np: uint8 [n, 8] twice -> uint8 [n, 12]."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    return np.concatenate([
        sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
        mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
        (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4),
    ], axis=1)


def _unpack_scales_q3(packed: np.ndarray) -> np.ndarray:
    """Q3_K's 12 bytes -> 16 unsigned six-bit scales (value - 32 is the signed scale).

    Bytes 0-7: low nibbles (scale j < 8 in byte j's low half, j >= 8 in byte j-8's high
    half); byte 8 + k: top two bits of scales k, k+4, k+8, k+12 at shifts 0, 2, 4, 6.
    """
    low = split_fields(packed[:, 0:8], 4).reshape(-1, 16)
    high = split_fields(packed[:, 8:12], 2).reshape(-1, 16)
    return low | (high << 4)


def _pack_scales_q3(scales: np.ndarray) -> np.ndarray:
    s = scales.astype(np.uint8)
    return np.concatenate([join_fields((s & 0x0F).reshape(-1, 2, 8), 4),
                           join_fields((s >> 4).reshape(-1, 4, 4), 2)], axis=1)


def _two_bit_rows(qs: np.ndarray) -> np.ndarray:
    """64 bytes -> 256 two-bit quants: byte 32h + l, field i -> weight 128h + 32i + l."""
    return split_fields(qs.reshape(-1, 2, 32), 2).reshape(-1, 256)


def _join_two_bit_rows(q: np.ndarray) -> np.ndarray:
    return join_fields((q & 3).reshape(-1, 2, 4, 32), 2).reshape(-1, 64)


def _nibble_rows(qs: np.ndarray) -> np.ndarray:
    """128 bytes -> 256 nibbles: byte 32c + l, nibble i -> weight 64c + 32i + l."""
    return split_fields(qs.reshape(-1, 4, 32), 4).reshape(-1, 256)


def _join_nibble_rows(q: np.ndarray) -> np.ndarray:
    return join_fields((q & 0x0F).reshape(-1, 4, 2, 32), 4).reshape(-1, 128)


def _bit_rows(bits: np.ndarray) -> np.ndarray:
    """32 bytes -> 256 bits: bit b of byte l -> weight 32b + l (Q3_K hmask, Q5_K qh)."""
    return split_fields(bits, 1).reshape(-1, 256)


def _join_bit_rows(bits: np.ndarray) -> np.ndarray:
    return join_fields(bits.reshape(-1, 8, 32), 1)


def _unpack_q2_k(fmt: QuantFormat, blocks: np.ndarray) -> BlockCodes:
    scales = blocks[:, 0:16]
    return BlockCodes(fmt, _two_bit_rows(blocks[:, 16:80]), fp16_column(blocks, 80), m=fp16_column(blocks, 82),
                      scales=scales & 0x0F, mins=scales >> 4)


def _unpack_q3_k(fmt: QuantFormat, blocks: np.ndarray) -> BlockCodes:
    q = _two_bit_rows(blocks[:, 32:96]) | (_bit_rows(blocks[:, 0:32]) << 2)
    return BlockCodes(fmt, q, fp16_column(blocks, 108), scales=_unpack_scales_q3(blocks[:, 96:108]))


def _unpack_q4_k(fmt: QuantFormat, blocks: np.ndarray) -> BlockCodes:
    sc, mn = unpack_scale_min_k4_np(blocks[:, 4:16])
    return BlockCodes(fmt, _nibble_rows(blocks[:, 16:144]), fp16_column(blocks, 0), m=fp16_column(blocks, 2),
                      scales=sc, mins=mn)


def _unpack_q5_k(fmt: QuantFormat, blocks: np.ndarray) -> BlockCodes:
    sc, mn = unpack_scale_min_k4_np(blocks[:, 4:16])
    q = _nibble_rows(blocks[:, 48:176]) | (_bit_rows(blocks[:, 16:48]) << 4)
    return BlockCodes(fmt, q, fp16_column(blocks, 0), m=fp16_column(blocks, 2), scales=sc, mins=mn)


def _unpack_q6_k(fmt: QuantFormat, blocks: np.ndarray) -> BlockCodes:
    # ql: byte 64h + p, nibble i -> weight 128h + 64i + p; qh: like Q2_K's two-bit rows.
    low = split_fields(blocks[:, 0:128].reshape(-1, 2, 64), 4).reshape(-1, 256)
    q = low | (_two_bit_rows(blocks[:, 128:192]) << 4)
    scales = np.ascontiguousarray(blocks[:, 192:208]).view(np.int8)
    return BlockCodes(fmt, q, fp16_column(blocks, 208), scales=scales)


def _require(codes: BlockCodes, field: str, width: int, low: int, high: int) -> np.ndarray:
    value = getattr(codes, field)
    if value is None or value.shape != (codes.num_blocks, width):
        raise ValueError(f"{codes.fmt.name}: {field} must be [{codes.num_blocks}, {width}]")
    check_range(field, value, low, high, codes.fmt)
    return value


def _dmin(codes: BlockCodes) -> np.ndarray:
    if codes.m is None or codes.m.shape != codes.d.shape:
        raise ValueError(f"{codes.fmt.name}: m (dmin) must be float16 [{codes.num_blocks}]")
    return fp16_bytes(codes.m)


def _pack_q2_k(codes: BlockCodes) -> np.ndarray:
    check_range("codes", codes.codes, 0, 3, codes.fmt)
    sc, mn = _require(codes, "scales", 16, 0, 15), _require(codes, "mins", 16, 0, 15)
    scales = sc.astype(np.uint8) | (mn.astype(np.uint8) << 4)
    return np.concatenate([scales, _join_two_bit_rows(codes.codes), fp16_bytes(codes.d), _dmin(codes)], axis=1)


def _pack_q3_k(codes: BlockCodes) -> np.ndarray:
    check_range("codes", codes.codes, 0, 7, codes.fmt)
    scales = _pack_scales_q3(_require(codes, "scales", 16, 0, 63))
    q = codes.codes.astype(np.uint8)
    return np.concatenate([_join_bit_rows(q >> 2), _join_two_bit_rows(q), scales, fp16_bytes(codes.d)], axis=1)


def _pack_q4_k(codes: BlockCodes) -> np.ndarray:
    check_range("codes", codes.codes, 0, 15, codes.fmt)
    scales = pack_scale_min_k4_np(_require(codes, "scales", 8, 0, 63), _require(codes, "mins", 8, 0, 63))
    return np.concatenate([fp16_bytes(codes.d), _dmin(codes), scales, _join_nibble_rows(codes.codes)], axis=1)


def _pack_q5_k(codes: BlockCodes) -> np.ndarray:
    check_range("codes", codes.codes, 0, 31, codes.fmt)
    scales = pack_scale_min_k4_np(_require(codes, "scales", 8, 0, 63), _require(codes, "mins", 8, 0, 63))
    q = codes.codes.astype(np.uint8)
    return np.concatenate([fp16_bytes(codes.d), _dmin(codes), scales, _join_bit_rows(q >> 4),
                           _join_nibble_rows(q)], axis=1)


def _pack_q6_k(codes: BlockCodes) -> np.ndarray:
    check_range("codes", codes.codes, 0, 63, codes.fmt)
    scales = np.ascontiguousarray(_require(codes, "scales", 16, -128, 127), dtype=np.int8).view(np.uint8)
    q = codes.codes.astype(np.uint8)
    low = join_fields((q & 0x0F).reshape(-1, 2, 2, 64), 4).reshape(-1, 128)
    return np.concatenate([low, _join_two_bit_rows(q >> 4), scales, fp16_bytes(codes.d)], axis=1)


_T = GGMLQuantizationType
UNPACKERS = {_T.Q2_K: _unpack_q2_k, _T.Q3_K: _unpack_q3_k, _T.Q4_K: _unpack_q4_k, _T.Q5_K: _unpack_q5_k,
             _T.Q6_K: _unpack_q6_k}
PACKERS = {_T.Q2_K: _pack_q2_k, _T.Q3_K: _pack_q3_k, _T.Q4_K: _pack_q4_k, _T.Q5_K: _pack_q5_k,
           _T.Q6_K: _pack_q6_k}
