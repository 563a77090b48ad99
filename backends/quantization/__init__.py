"""GGML block formats and their torch dequantizers (bit-exact with gguf.quants)."""

from backends.quantization.dequantize import dequantize
from backends.quantization.dequantize_kquants import unpack_scale_min_k4, unpack_scales_q3_k
from backends.quantization.formats import (
    SUPPORTED_FORMATS,
    QuantFormat,
    format_by_id,
    format_by_name,
    resolve_format,
)

__all__ = [
    "SUPPORTED_FORMATS",
    "QuantFormat",
    "dequantize",
    "format_by_id",
    "format_by_name",
    "resolve_format",
    "unpack_scale_min_k4",
    "unpack_scales_q3_k",
]
