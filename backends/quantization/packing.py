"""Byte-level field readers shared by the block decoders.

Every decoder receives `blocks`, a uint8 tensor [num_blocks, type_size], and slices its
fields out by byte offset. These helpers keep that slicing identical everywhere.

NOTE (speed): torch's uint8 kernels are only fast on contiguous inputs with scalar
operands; a column slice of `blocks` is strided and a broadcast tensor of shift counts
is not vectorized (each measured 5-10x slower). Hence `byte_field` copies a field out
once, and `unpack_fields` shifts by Python ints.
"""

from __future__ import annotations

import torch


def byte_field(blocks: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Bytes [start, stop) of each block as a contiguous uint8 [num_blocks, stop - start]."""
    return blocks[:, start:stop].contiguous()


def fp16_field(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The little-endian fp16 at byte `start` of each block, as float32 [num_blocks, 1].

    NOTE: converting to float32 before any arithmetic is what the reference does; fp16
    arithmetic would round (and overflow) where float32 is exact.
    """
    return byte_field(blocks, start, start + 2).view(torch.float16).to(torch.float32)


def offset_to_int8(q: torch.Tensor, offset: int) -> torch.Tensor:
    """q - offset as int8, computed in place on uint8 `q`.

    Exact for results in -128..127: the uint8 subtraction wraps mod 256, and reading
    those bytes as int8 undoes the wrap. It saves a float pass per weight.
    """
    return q.sub_(offset).view(torch.int8)


def unpack_fields(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Split each byte into its 8 // bits fields, lowest bits first.

    uint8 [..., n] -> uint8 [..., 8 // bits, n]: field i of every byte lands in row i,
    which is how every GGML format lays out its packed quants.
    """
    packed = packed.contiguous()
    num_fields = 8 // bits
    mask = (1 << bits) - 1
    out = torch.empty(*packed.shape[:-1], num_fields, packed.shape[-1], dtype=torch.uint8, device=packed.device)
    for i in range(num_fields):
        field = out[..., i, :]
        if i == 0:
            torch.bitwise_and(packed, mask, out=field)
        else:
            torch.bitwise_right_shift(packed, i * bits, out=field)
            if i < num_fields - 1:  # the top field has no higher bits to clear
                field &= mask
    return out


def _fifth_bit_table() -> torch.Tensor:
    byte_values = torch.arange(256, dtype=torch.int64).unsqueeze(1)
    bit_ids = torch.arange(8, dtype=torch.int64)
    return (((byte_values >> bit_ids) & 1) << 4).to(torch.uint8)


# Row b: the 8 bits of byte value b, lowest first, each as 0 or 16. Built once because
# the decoders run per 32K-weight chunk, where every extra op shows.
_FIFTH_BIT_TABLE = _fifth_bit_table()


def fifth_bits(packed: torch.Tensor) -> torch.Tensor:
    """Spread a bit mask into per-weight fifth bits: bit j of byte i -> weight 8*i + j.

    uint8 [n, m] -> uint8 [n, 8 * m] of 0 or 16, ready to OR onto a 4-bit quant.
    NOTE: a 256-row table lookup; 8 shift-and-mask ops measured over 2x slower.
    """
    table = _FIFTH_BIT_TABLE.to(packed.device)
    return table.index_select(0, packed.reshape(-1).to(torch.int64)).view(packed.shape[0], -1)
