"""Shared pieces of the GGML block packers: BlockCodes and byte-field helpers.

See pack_blocks.py for what each format's codes mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.quantization.formats import QuantFormat


@dataclass(frozen=True)
class BlockCodes:
    """The fields of `num_blocks` blocks of one format, unpacked to one array each."""

    fmt: QuantFormat
    codes: np.ndarray  # [n, block_size] quant per weight: uint8 (int8 for Q8_0), meaning in pack_blocks.py
    d: np.ndarray  # float16 [n]: the block scale
    m: np.ndarray | None = None  # float16 [n]: Q4_1/Q5_1 min, k-quant dmin; None otherwise
    scales: np.ndarray | None = None  # [n, sub-blocks] k-quant sub-block scales (int8 for Q6_K)
    mins: np.ndarray | None = None  # uint8 [n, sub-blocks]: Q2_K/Q4_K/Q5_K sub-block mins

    @property
    def num_blocks(self) -> int:
        return int(self.codes.shape[0])


def split_fields(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [..., n] -> uint8 [..., 8 // bits, n]: field i of each byte in row i, lowest first."""
    shifts = np.arange(0, 8, bits, dtype=np.uint8).reshape(-1, 1)
    return (packed[..., None, :] >> shifts) & np.uint8((1 << bits) - 1)


def join_fields(fields: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of split_fields: uint8 [..., 8 // bits, n] -> uint8 [..., n]."""
    shifts = np.arange(0, 8, bits, dtype=np.uint8).reshape(-1, 1)
    return np.bitwise_or.reduce(fields.astype(np.uint8) << shifts, axis=-2)


def fp16_column(blocks: np.ndarray, start: int) -> np.ndarray:
    """The little-endian fp16 at byte `start` of every block, as float16 [n]."""
    return np.ascontiguousarray(blocks[:, start:start + 2]).view("<f2").reshape(-1)


def fp16_bytes(values: np.ndarray) -> np.ndarray:
    """float16 [n] -> uint8 [n, 2] little-endian bytes."""
    return np.ascontiguousarray(values, dtype="<f2").view(np.uint8).reshape(-1, 2)


def check_range(name: str, values: np.ndarray, low: int, high: int, fmt: QuantFormat) -> None:
    """ValueError unless every entry of `values` lies in [low, high]."""
    if values.size and (int(values.min()) < low or int(values.max()) > high):
        raise ValueError(f"{fmt.name}: {name} must lie in {low}..{high}, "
                         f"got {int(values.min())}..{int(values.max())}")
