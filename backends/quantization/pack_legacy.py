"""Pack and unpack the 32-weight "legacy" blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Layouts (bytes, in order): Q4_0 d:f16 qs:16; Q4_1 d m qs:16; Q5_0 d qh:4 qs:16;
Q5_1 d m qh:4 qs:16; Q8_0 d qs:i8*32. In qs, byte j holds weight j in its low nibble and
weight j + 16 in its high one; qh is a little-endian uint32 whose bit j is weight j's 5th bit.
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


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """uint8 [n, 16] -> [n, 32]: low nibbles are weights 0..15, high ones 16..31."""
    return split_fields(qs, 4).reshape(-1, 32)


def _join_nibbles(q: np.ndarray) -> np.ndarray:
    return join_fields((q & 0x0F).reshape(-1, 2, 16), 4)


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """uint8 [n, 4] (a LE uint32) -> [n, 32] bits: bit j of the word belongs to weight j."""
    return split_fields(qh, 1).transpose(0, 2, 1).reshape(-1, 32)


def _join_fifth_bits(q: np.ndarray) -> np.ndarray:
    return join_fields((q >> 4).reshape(-1, 4, 8).transpose(0, 2, 1), 1)


def _unpack_q4(fmt: QuantFormat, blocks: np.ndarray) -> BlockCodes:
    has_min = fmt.ggml_type == GGMLQuantizationType.Q4_1
    qs_start = 4 if has_min else 2
    return BlockCodes(fmt, _nibbles(blocks[:, qs_start:qs_start + 16]), fp16_column(blocks, 0),
                      m=fp16_column(blocks, 2) if has_min else None)


def _unpack_q5(fmt: QuantFormat, blocks: np.ndarray) -> BlockCodes:
    has_min = fmt.ggml_type == GGMLQuantizationType.Q5_1
    qh_start = 4 if has_min else 2
    q = _nibbles(blocks[:, qh_start + 4:qh_start + 20]) | (_fifth_bits(blocks[:, qh_start:qh_start + 4]) << 4)
    return BlockCodes(fmt, q, fp16_column(blocks, 0), m=fp16_column(blocks, 2) if has_min else None)


def _unpack_q8_0(fmt: QuantFormat, blocks: np.ndarray) -> BlockCodes:
    return BlockCodes(fmt, np.ascontiguousarray(blocks[:, 2:34]).view(np.int8), fp16_column(blocks, 0))


def _head(codes: BlockCodes) -> list[np.ndarray]:
    """The fp16 fields that open a block: d, then m where the format has one."""
    fields = [fp16_bytes(codes.d)]
    if codes.fmt.ggml_type in (GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_1):
        if codes.m is None or codes.m.shape != codes.d.shape:
            raise ValueError(f"{codes.fmt.name}: m must be float16 [{codes.num_blocks}]")
        fields.append(fp16_bytes(codes.m))
    return fields


def _pack_q4(codes: BlockCodes) -> np.ndarray:
    check_range("codes", codes.codes, 0, 15, codes.fmt)
    return np.concatenate([*_head(codes), _join_nibbles(codes.codes)], axis=1)


def _pack_q5(codes: BlockCodes) -> np.ndarray:
    check_range("codes", codes.codes, 0, 31, codes.fmt)
    q = codes.codes.astype(np.uint8)
    return np.concatenate([*_head(codes), _join_fifth_bits(q), _join_nibbles(q)], axis=1)


def _pack_q8_0(codes: BlockCodes) -> np.ndarray:
    check_range("codes", codes.codes, -128, 127, codes.fmt)
    q = np.ascontiguousarray(codes.codes, dtype=np.int8).view(np.uint8)
    return np.concatenate([fp16_bytes(codes.d), q], axis=1)


_T = GGMLQuantizationType
UNPACKERS = {_T.Q4_0: _unpack_q4, _T.Q4_1: _unpack_q4, _T.Q5_0: _unpack_q5, _T.Q5_1: _unpack_q5,
             _T.Q8_0: _unpack_q8_0}
PACKERS = {_T.Q4_0: _pack_q4, _T.Q4_1: _pack_q4, _T.Q5_0: _pack_q5, _T.Q5_1: _pack_q5, _T.Q8_0: _pack_q8_0}
