"""Decoders for the plain float types and the 32-weight "legacy" quants (Q4_0 .. Q8_0).

Each decoder reads uint8 blocks [n, type_size] and writes float32 [n, block_size] into
`out`, which it returns. Results match gguf.quants bit for bit: `d * q` is exact in
float32 (an fp16 significand below 2**11 times a quant of magnitude at most 2**7), so
the only rounding is the `+ m` of the _1 types, done as its own op like the reference.
Integer work (unpacking, the -8/-16 offsets) is exact, so where it happens is free.
"""

from __future__ import annotations

import torch

from backends.quantization.packing import (
    byte_field,
    fifth_bits,
    fp16_field,
    offset_to_int8,
    unpack_fields,
)


def dequantize_f32(blocks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return out.copy_(blocks.contiguous().view(torch.float32))


def dequantize_f16(blocks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return out.copy_(blocks.contiguous().view(torch.float16))


def dequantize_bf16(blocks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    # bf16 -> f32 is exact (the top half of a float32), NaN payloads included.
    return out.copy_(blocks.contiguous().view(torch.bfloat16))


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """16 packed bytes -> 32 quants: low nibbles are weights 0..15, high ones 16..31."""
    return unpack_fields(qs, 4).view(qs.shape[0], 32)


def dequantize_q4_0(blocks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    d = fp16_field(blocks, 0)  # layout: d:f16, qs:16
    out.copy_(offset_to_int8(_nibbles(byte_field(blocks, 2, 18)), 8))
    return out.mul_(d)


def dequantize_q4_1(blocks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    d, m = fp16_field(blocks, 0), fp16_field(blocks, 2)  # layout: d:f16, m:f16, qs:16
    out.copy_(_nibbles(byte_field(blocks, 4, 20)))
    return out.mul_(d).add_(m)


def dequantize_q5_0(blocks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    d = fp16_field(blocks, 0)  # layout: d:f16, qh:4 (a little-endian uint32), qs:16
    q = _nibbles(byte_field(blocks, 6, 22)).bitwise_or_(fifth_bits(byte_field(blocks, 2, 6)))
    out.copy_(offset_to_int8(q, 16))
    return out.mul_(d)


def dequantize_q5_1(blocks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    d, m = fp16_field(blocks, 0), fp16_field(blocks, 2)  # layout: d, m, qh:4, qs:16
    q = _nibbles(byte_field(blocks, 8, 24)).bitwise_or_(fifth_bits(byte_field(blocks, 4, 8)))
    out.copy_(q)
    return out.mul_(d).add_(m)


def dequantize_q8_0(blocks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    d = fp16_field(blocks, 0)  # layout: d:f16, qs:int8*32
    out.copy_(blocks[:, 2:34].view(torch.int8))
    return out.mul_(d)
