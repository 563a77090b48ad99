"""The GGML tensor storage formats this project can read, and their block geometry.

A GGML tensor row is a run of fixed-size blocks: `block_size` weights packed into
`type_size` bytes. Plain float types are "blocks" of one weight.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGMLQuantizationType

QK_K = 256  # weights per super-block of every k-quant


@dataclass(frozen=True)
class QuantFormat:
    """Block geometry of one GGML storage type."""

    name: str  # GGML spelling, e.g. "Q4_K"
    ggml_type: GGMLQuantizationType  # the type id stored in a GGUF tensor header
    block_size: int  # weights per block
    type_size: int  # bytes per block

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.type_size <= 0:
            raise ValueError(f"{self.name}: block_size and type_size must be positive")

    def bytes_per_row(self, num_cols: int) -> int:
        """Bytes one row of `num_cols` weights occupies; rows never split a block."""
        if num_cols <= 0 or num_cols % self.block_size != 0:
            raise ValueError(
                f"{self.name}: a row of {num_cols} weights is not a positive multiple "
                f"of the block size {self.block_size}"
            )
        return num_cols // self.block_size * self.type_size


_T = GGMLQuantizationType

# Byte layouts (in storage order) are noted because the dequantizers slice by them.
F32 = QuantFormat("F32", _T.F32, 1, 4)
F16 = QuantFormat("F16", _T.F16, 1, 2)
BF16 = QuantFormat("BF16", _T.BF16, 1, 2)
Q4_0 = QuantFormat("Q4_0", _T.Q4_0, 32, 2 + 16)  # d:f16, qs:16
Q4_1 = QuantFormat("Q4_1", _T.Q4_1, 32, 2 + 2 + 16)  # d:f16, m:f16, qs:16
Q5_0 = QuantFormat("Q5_0", _T.Q5_0, 32, 2 + 4 + 16)  # d:f16, qh:4, qs:16
Q5_1 = QuantFormat("Q5_1", _T.Q5_1, 32, 2 + 2 + 4 + 16)  # d:f16, m:f16, qh:4, qs:16
Q8_0 = QuantFormat("Q8_0", _T.Q8_0, 32, 2 + 32)  # d:f16, qs:i8*32
Q2_K = QuantFormat("Q2_K", _T.Q2_K, QK_K, 16 + 64 + 2 + 2)  # scales, qs, d, dmin
Q3_K = QuantFormat("Q3_K", _T.Q3_K, QK_K, 32 + 64 + 12 + 2)  # hmask, qs, scales, d
Q4_K = QuantFormat("Q4_K", _T.Q4_K, QK_K, 2 + 2 + 12 + 128)  # d, dmin, scales, qs
Q5_K = QuantFormat("Q5_K", _T.Q5_K, QK_K, 2 + 2 + 12 + 32 + 128)  # d, dmin, scales, qh, qs
Q6_K = QuantFormat("Q6_K", _T.Q6_K, QK_K, 128 + 64 + 16 + 2)  # ql, qh, scales, d

SUPPORTED_FORMATS: tuple[QuantFormat, ...] = (
    F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
)

_BY_ID = {fmt.ggml_type: fmt for fmt in SUPPORTED_FORMATS}
_BY_NAME = {fmt.name: fmt for fmt in SUPPORTED_FORMATS}


def _supported_names() -> str:
    return ", ".join(_BY_NAME)


def format_by_id(ggml_type: int | GGMLQuantizationType) -> QuantFormat:
    """The format for a GGUF tensor type id; ValueError for types we do not read."""
    try:
        key = GGMLQuantizationType(int(ggml_type))
    except ValueError:
        raise ValueError(f"unknown GGML type id {ggml_type!r}") from None
    fmt = _BY_ID.get(key)
    if fmt is None:
        raise ValueError(f"GGML type {key.name} is not supported (supported: {_supported_names()})")
    return fmt


def format_by_name(name: str) -> QuantFormat:
    """The format for a GGML type name such as "Q4_K" (case-insensitive)."""
    fmt = _BY_NAME.get(name.upper())
    if fmt is None:
        raise ValueError(f"GGML type {name!r} is not supported (supported: {_supported_names()})")
    return fmt


def resolve_format(ggml_type: int | str | GGMLQuantizationType | QuantFormat) -> QuantFormat:
    """Accept any of the ways callers name a type: a format, an id, or a name."""
    if isinstance(ggml_type, QuantFormat):
        return ggml_type
    if isinstance(ggml_type, str):
        return format_by_name(ggml_type)
    return format_by_id(ggml_type)
