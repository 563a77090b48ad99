"""Decoders for the 256-weight k-quants (Q2_K .. Q6_K), plus their scale unpackers.

Each decoder reads uint8 blocks [n, type_size] and writes float32 [n, 256] into `out`,
which it returns. A k-quant super-block holds 8 or 16 sub-blocks, each with its own
small integer scale (and, for Q2/Q4/Q5, min) that multiplies the block's fp16 `d`
(and `dmin`).

NOTE on bit-exactness with gguf.quants: every product here is exact in float32. An fp16
significand (below 2**11) times a sub-block scale (magnitude at most 2**7) times a quant
(at most 2**5) stays below 2**23, within float32's 24-bit significand, so no
multiplication order can change a bit. The one rounding is the final `- dmin * min` of
Q2_K/Q4_K/Q5_K, done as its own op like the reference. (A fused multiply-add would match
too, as its product is exact, but nothing here relies on that.)
"""

from __future__ import annotations

import torch

from backends.quantization.packing import byte_field, fp16_field, offset_to_int8, unpack_fields


def _check_packed_scales(scales: torch.Tensor) -> None:
    if scales.dtype != torch.uint8 or scales.dim() != 2 or scales.shape[1] != 12:
        raise ValueError(f"expected uint8 [n, 12] packed scales, got {scales.dtype} {tuple(scales.shape)}")


def unpack_scale_min_k4(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split Q4_K/Q5_K's 12 packed bytes into 8 six-bit scales and 8 six-bit mins.

    uint8 [n, 12] -> (scales uint8 [n, 8], mins uint8 [n, 8]). Byte layout, bits
    high to low, where A..H are the bits of scales 0-7 and a..h those of mins 0-7:

        bytes 0-3:  EEAAAAAA FFBBBBBB GGCCCCCC HHDDDDDD   (scales 0-3, top bits of 4-7)
        bytes 4-7:  eeaaaaaa ffbbbbbb ggcccccc hhdddddd   (mins 0-3, top bits of 4-7)
        bytes 8-11: eeeeEEEE ffffFFFF ggggGGGG hhhhHHHH   (low nibbles of 4-7)
    """
    _check_packed_scales(scales)
    scales = scales.contiguous()
    lo_sc, lo_min, hi_nibbles = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat([lo_sc & 0x3F, (hi_nibbles & 0x0F) | ((lo_sc >> 2) & 0x30)], dim=1)
    mins = torch.cat([lo_min & 0x3F, (hi_nibbles >> 4) | ((lo_min >> 2) & 0x30)], dim=1)
    return sc, mins


def unpack_scales_q3_k(scales: torch.Tensor) -> torch.Tensor:
    """Q3_K's 12 packed bytes -> 16 signed six-bit scales, int8 [n, 16] in -32..31.

    Bytes 0-7 hold the low nibbles (scales 0-7 in the low halves, 8-15 in the high
    halves); bytes 8-11 hold the top two bits, four scales per byte, lowest bits first.
    """
    _check_packed_scales(scales)
    n = scales.shape[0]
    scales = scales.contiguous()
    low = unpack_fields(scales[:, 0:8], 4).reshape(n, 16)
    high = unpack_fields(scales[:, 8:12], 2).reshape(n, 16)
    return offset_to_int8(low.bitwise_or_(high.bitwise_left_shift_(4)), 32)


def dequantize_q2_k(blocks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]  # layout: scales:16 (min << 4 | scale), qs:64, d:f16, dmin:f16
    scales = byte_field(blocks, 0, 16)
    d, dmin = fp16_field(blocks, 80), fp16_field(blocks, 82)
    dl = (d * (scales & 0x0F).to(torch.float32)).unsqueeze(-1)  # [n, 16, 1]
    ml = (dmin * (scales >> 4).to(torch.float32)).unsqueeze(-1)
    # 2-bit quants: each 32-byte half packs 4 rows of 32 weights, lowest bits first.
    rows = out.view(n, 16, 16)
    rows.copy_(unpack_fields(byte_field(blocks, 16, 80).view(n, 2, 32), 2).view(n, 16, 16))
    rows.mul_(dl).sub_(ml)
    return out


def dequantize_q3_k(blocks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]  # layout: hmask:32, qs:64, scales:12, d:f16
    d = fp16_field(blocks, 108)
    dl = (d * unpack_scales_q3_k(blocks[:, 96:108]).to(torch.float32)).unsqueeze(-1)
    low = unpack_fields(byte_field(blocks, 32, 96).view(n, 2, 32), 2).view(n, 16, 16)
    high = unpack_fields(byte_field(blocks, 0, 32), 1).view(n, 16, 16)
    # NOTE: a *clear* hmask bit subtracts 4 and a set one adds nothing, which is
    # (low | high << 2) - 4.
    q = offset_to_int8(low.bitwise_or_(high.bitwise_left_shift_(2)), 4)
    rows = out.view(n, 16, 16)
    rows.copy_(q)
    rows.mul_(dl)
    return out


def _scaled_sub_blocks(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K per-sub-block factors (d * scale, dmin * min), each float32 [n, 8, 1]."""
    d, dmin = fp16_field(blocks, 0), fp16_field(blocks, 2)
    sc, mins = unpack_scale_min_k4(blocks[:, 4:16])
    return (d * sc.to(torch.float32)).unsqueeze(-1), (dmin * mins.to(torch.float32)).unsqueeze(-1)


def _nibble_rows(qs: torch.Tensor) -> torch.Tensor:
    """128 bytes -> [n, 8, 32] 4-bit quants: each 32-byte run packs two rows of 32."""
    n = qs.shape[0]
    return unpack_fields(qs.reshape(n, 4, 32), 4).view(n, 8, 32)


def dequantize_q4_k(blocks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]  # layout: d:f16, dmin:f16, scales:12, qs:128
    dl, ml = _scaled_sub_blocks(blocks)
    rows = out.view(n, 8, 32)
    rows.copy_(_nibble_rows(byte_field(blocks, 16, 144)))
    rows.mul_(dl).sub_(ml)
    return out


def dequantize_q5_k(blocks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]  # layout: d:f16, dmin:f16, scales:12, qh:32, qs:128
    dl, ml = _scaled_sub_blocks(blocks)
    high = unpack_fields(byte_field(blocks, 16, 48), 1)  # bit i of byte j -> row i, weight j
    q = _nibble_rows(byte_field(blocks, 48, 176)).bitwise_or_(high.bitwise_left_shift_(4))
    rows = out.view(n, 8, 32)
    rows.copy_(q)
    rows.mul_(dl).sub_(ml)
    return out


def dequantize_q6_k(blocks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]  # layout: ql:128, qh:64, scales:int8*16, d:f16
    d = fp16_field(blocks, 208)
    dl = (d * byte_field(blocks, 192, 208).view(torch.int8).to(torch.float32)).unsqueeze(-1)
    low = unpack_fields(byte_field(blocks, 0, 128).view(n, 2, 64), 4).view(n, 8, 32)
    high = unpack_fields(byte_field(blocks, 128, 192).view(n, 2, 32), 2).view(n, 8, 32)
    q = offset_to_int8(low.bitwise_or_(high.bitwise_left_shift_(4)), 32)
    rows = out.view(n, 16, 16)
    rows.copy_(q.view(n, 16, 16))
    rows.mul_(dl)
    return out
