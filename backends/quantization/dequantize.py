"""Turn a GGUF tensor's raw bytes into float32 weights, bit-exact with gguf.quants.

    weights = dequantize(raw_bytes, "Q4_K", (num_rows, num_cols))

The per-format decoders live in dequantize_legacy.py and dequantize_kquants.py; this
module validates the input, dispatches, and walks big tensors in cache-sized chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod

import torch
from gguf import GGMLQuantizationType

from backends.quantization import dequantize_kquants as kq
from backends.quantization import dequantize_legacy as lq
from backends.quantization.formats import QuantFormat, resolve_format

# A decoder reads uint8 blocks [n, type_size], fills float32 out [n, block_size], returns out.
BlockDecoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_T = GGMLQuantizationType
_DECODERS: dict[GGMLQuantizationType, BlockDecoder] = {
    _T.F32: lq.dequantize_f32,
    _T.F16: lq.dequantize_f16,
    _T.BF16: lq.dequantize_bf16,
    _T.Q4_0: lq.dequantize_q4_0,
    _T.Q4_1: lq.dequantize_q4_1,
    _T.Q5_0: lq.dequantize_q5_0,
    _T.Q5_1: lq.dequantize_q5_1,
    _T.Q8_0: lq.dequantize_q8_0,
    _T.Q2_K: kq.dequantize_q2_k,
    _T.Q3_K: kq.dequantize_q3_k,
    _T.Q4_K: kq.dequantize_q4_k,
    _T.Q5_K: kq.dequantize_q5_k,
    _T.Q6_K: kq.dequantize_q6_k,
}

# Weights decoded per step on CPU. NOTE: 2**15 keeps every op at or under torch's
# 32768-element parallel grain, so decoding runs on the calling thread alone. Bigger ops
# wake torch's OpenMP workers, whose spin-waits collapse once other processes share the
# cores. Whole Gemma 3 270M on this project's 2-core box, 2 torch threads, one run:
# 2**15 chunks 1.3-2.8 s; one pass per tensor 0.5 s while the box was quiet but 4.7-6.3 s
# while it was busy (2**18 chunks: up to 30 s). Steady times are worth ~3x the best case.
_CPU_CHUNK_WEIGHTS = 1 << 15


def dequantize(
    raw: torch.Tensor,
    ggml_type: int | str | GGMLQuantizationType | QuantFormat,
    shape: Sequence[int],
) -> torch.Tensor:
    """Decode GGML-packed `raw` bytes into a new float32 tensor of `shape`.

    raw: uint8, either [rows, bytes_per_row] or flat, on any device.
    ggml_type: the GGUF tensor type (id, name, or QuantFormat).
    shape: the logical shape, outermost first and the contiguous (blocked) dimension
        last, i.e. the reverse of a GGUF header's `ne`. A 2-D shape gives [rows, cols].
    The result lives on raw's device and never aliases `raw`.
    """
    fmt = resolve_format(ggml_type)
    shape = tuple(int(dim) for dim in shape)
    if not shape or any(dim <= 0 for dim in shape):
        raise ValueError(f"shape must be non-empty with positive dims, got {shape}")
    if raw.dtype != torch.uint8:
        raise ValueError(f"raw must be uint8 bytes, got {raw.dtype}")
    expected_bytes = prod(shape[:-1]) * fmt.bytes_per_row(shape[-1])
    if raw.numel() != expected_bytes:
        raise ValueError(f"{fmt.name} {shape} needs {expected_bytes} bytes, raw has {raw.numel()}")

    decode = _DECODERS[fmt.ggml_type]
    blocks = raw.reshape(-1, fmt.type_size).contiguous()
    out = torch.empty(blocks.shape[0], fmt.block_size, dtype=torch.float32, device=raw.device)
    # Off CPU there is no thread pool to dodge, and each chunk would cost kernel launches.
    step = max(1, _CPU_CHUNK_WEIGHTS // fmt.block_size) if raw.device.type == "cpu" else blocks.shape[0]
    for start in range(0, blocks.shape[0], step):
        decode(blocks[start : start + step], out[start : start + step])
    return out.view(shape)
