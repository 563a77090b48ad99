"""GGML block formats: torch dequantizers (bit-exact with gguf.quants), block pack/unpack, quantizers."""

from backends.quantization.dequantize import dequantize
from backends.quantization.dequantize_kquants import unpack_scale_min_k4, unpack_scales_q3_k
from backends.quantization.formats import (
    SUPPORTED_FORMATS,
    QuantFormat,
    format_by_id,
    format_by_name,
    resolve_format,
)
from backends.quantization.pack_blocks import BlockCodes, codes_to_float, pack_blocks, unpack_blocks
from backends.quantization.quantizer import quantize_tensor

__all__ = [
    "SUPPORTED_FORMATS",
    "BlockCodes",
    "QuantFormat",
    "codes_to_float",
    "dequantize",
    "format_by_id",
    "format_by_name",
    "pack_blocks",
    "quantize_tensor",
    "resolve_format",
    "unpack_blocks",
    "unpack_scale_min_k4",
    "unpack_scales_q3_k",
]
