"""GGML blocks as integer codes plus scales, and back: `unpack_blocks` / `pack_blocks`.

    codes = unpack_blocks(raw, "Q4_K")      # raw: uint8 [..., bytes]; codes: BlockCodes
    raw_again = pack_blocks(codes)           # uint8 [num_blocks, type_size], byte for byte

A weight's value, per format (q = codes, d/m = the fp16 block fields, sc/mn = sub-block
scale and min of the weight's sub-block; the integer code meanings are GGML's):

    Q4_0  d * (q - 8)        Q4_1  d * q + m         Q8_0  d * q  (q int8)
    Q5_0  d * (q - 16)       Q5_1  d * q + m
    Q2_K  d * sc * q - m * mn     (16 sub-blocks of 16; sc, mn 4-bit; q 0..3)
    Q3_K  d * (sc - 32) * (q - 4) (16 sub-blocks of 16; sc 6-bit; q 0..7)
    Q4_K  d * sc * q - m * mn     (8 sub-blocks of 32; sc, mn 6-bit; q 0..15)
    Q5_K  d * sc * q - m * mn     (8 sub-blocks of 32; sc, mn 6-bit; q 0..31)
    Q6_K  d * sc * (q - 32)       (16 sub-blocks of 16; sc int8; q 0..63)

Everything is numpy, vectorized over blocks: numpy runs on the calling thread, which keeps
these byte shuffles steady on a busy 2-core box (see dequantize.py's note on torch threads).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from backends.quantization import pack_kquants, pack_legacy
from backends.quantization.formats import QuantFormat, resolve_format
from backends.quantization.pack_fields import BlockCodes

__all__ = ["BlockCodes", "codes_to_float", "pack_blocks", "unpack_blocks"]

_UNPACKERS = {**pack_legacy.UNPACKERS, **pack_kquants.UNPACKERS}
_PACKERS = {**pack_legacy.PACKERS, **pack_kquants.PACKERS}


def unpack_blocks(raw: np.ndarray, ggml_type: int | str | GGMLQuantizationType | QuantFormat) -> BlockCodes:
    """Split raw GGML bytes (uint8, any shape holding whole blocks) into BlockCodes."""
    fmt = resolve_format(ggml_type)
    if fmt.ggml_type not in _UNPACKERS:
        raise ValueError(f"{fmt.name} is not a block-quantized format (nothing to unpack)")
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise ValueError(f"raw must be uint8 bytes, got {raw.dtype}")
    if raw.size % fmt.type_size:
        raise ValueError(f"{fmt.name}: {raw.size} bytes is not a whole number of {fmt.type_size}-byte blocks")
    return _UNPACKERS[fmt.ggml_type](fmt, raw.reshape(-1, fmt.type_size))


def pack_blocks(codes: BlockCodes) -> np.ndarray:
    """BlockCodes -> uint8 [num_blocks, type_size] in GGML's byte layout."""
    fmt = codes.fmt
    if fmt.ggml_type not in _PACKERS:
        raise ValueError(f"{fmt.name} is not a block-quantized format (nothing to pack)")
    if codes.codes.ndim != 2 or codes.codes.shape[1] != fmt.block_size:
        raise ValueError(f"{fmt.name}: codes must be [n, {fmt.block_size}], got {codes.codes.shape}")
    if codes.d.shape != (codes.num_blocks,):
        raise ValueError(f"{fmt.name}: d must be [{codes.num_blocks}], got {codes.d.shape}")
    return _PACKERS[fmt.ggml_type](codes)


def _sub_block_factor(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """scale [n] times per-sub-block ints [n, S], broadcast over each sub-block's weights."""
    return (scale.astype(np.float32)[:, None] * values.astype(np.float32))[:, :, None]


def codes_to_float(codes: BlockCodes) -> np.ndarray:
    """Weights float32 [n, block_size] from unpacked codes, by the formulas above.

    Bit-identical to gguf.quants.dequantize: each product is exact in float32 and the one
    add/subtract of a min rounds once, as in the reference.
    """
    t, n = codes.fmt.ggml_type, codes.num_blocks
    d = codes.d.astype(np.float32)[:, None]
    q = codes.codes.astype(np.float32)
    if t in (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q5_0):
        return d * (q - (8 if t == GGMLQuantizationType.Q4_0 else 16))
    if t in (GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_1):
        return d * q + codes.m.astype(np.float32)[:, None]
    if t == GGMLQuantizationType.Q8_0:
        return d * q
    num_sub = codes.scales.shape[1]
    q = q.reshape(n, num_sub, -1)
    if t == GGMLQuantizationType.Q3_K:
        out = _sub_block_factor(codes.scales.astype(np.int16) - 32, codes.d) * (q - 4)
    elif t == GGMLQuantizationType.Q6_K:
        out = _sub_block_factor(codes.scales, codes.d) * (q - 32)
    else:  # Q2_K, Q4_K, Q5_K
        out = _sub_block_factor(codes.scales, codes.d) * q - _sub_block_factor(codes.mins, codes.m)
    return out.reshape(n, -1)
