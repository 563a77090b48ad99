"""Torch dequantizers against gguf.quants.dequantize, bit for bit.

Random blocks of every supported format, then every tensor of both bundled GGUF files.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from gguf.quants import Q4_K as ReferenceQ4K
from gguf.quants import dequantize as reference_dequantize

from backends.bundled_models import gemma3_270m_gguf_path, smollm2_135m_gguf_path
from backends.quantization import (
    SUPPORTED_FORMATS,
    dequantize,
    format_by_id,
    format_by_name,
    unpack_scale_min_k4,
    unpack_scales_q3_k,
)

# importlib: the package re-exports the function `dequantize`, which shadows the module
# of the same name for a plain `import ... as`.
dequantize_module = importlib.import_module("backends.quantization.dequantize")

# Byte offsets of the fp16 fields (d, m, dmin) inside one block of each format.
FP16_OFFSETS = {
    "F16": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}


def assert_bit_identical(ours: torch.Tensor, expected: np.ndarray) -> None:
    """Same float32 bit patterns: stricter than ==, which equates -0.0 with 0.0.

    Compared in numpy, which runs on one thread: torch's 2-thread ops crawl whenever
    other processes keep this 2-core box busy.
    """
    assert ours.dtype == torch.float32 and expected.dtype == np.float32
    assert tuple(ours.shape) == expected.shape
    ours_np = ours.numpy()
    assert not np.isnan(ours_np).any()
    assert np.array_equal(ours_np.view(np.int32), expected.view(np.int32))


def random_raw(fmt, num_rows: int, num_cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random bytes [rows, bytes_per_row] whose float fields are all finite."""
    num_blocks = num_rows * num_cols // fmt.block_size
    if fmt.name == "F32":
        return rng.standard_normal(num_rows * num_cols, dtype=np.float32).view(np.uint8).reshape(num_rows, -1)
    raw = rng.integers(0, 256, size=(num_blocks, fmt.type_size), dtype=np.uint8)
    for offset in FP16_OFFSETS.get(fmt.name, []):
        halves = raw[:, offset : offset + 2].copy().view(np.uint16)
        # Exponent 31 is inf/NaN; clearing its top bit gives a finite value in [1, 2).
        # Zeros, subnormals and the largest finite halves all stay in the mix.
        halves = np.where((halves & 0x7C00) == 0x7C00, halves ^ 0x4000, halves).astype(np.uint16)
        raw[:, offset : offset + 2] = halves.view(np.uint8)
    if fmt.name == "BF16":
        raw[:, 1] &= 0xBF  # exponent 255 is inf/NaN; clearing its top bit keeps it finite
    return raw.reshape(num_rows, -1)


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS, ids=lambda f: f.name)
def test_random_blocks_match_reference_bit_for_bit(fmt, monkeypatch):
    # 5-block chunks: many of them, and 37 rows make a block count that leaves a partial
    # last chunk.
    monkeypatch.setattr(dequantize_module, "_CPU_CHUNK_WEIGHTS", 5 * fmt.block_size)
    num_rows, num_cols = 37, 8 * max(fmt.block_size, 32)
    raw = random_raw(fmt, num_rows, num_cols, np.random.default_rng(1234))
    expected = reference_dequantize(raw, fmt.ggml_type)
    ours = dequantize(torch.from_numpy(raw), fmt.ggml_type, (num_rows, num_cols))
    assert_bit_identical(ours, expected)


def test_flat_and_2d_raw_and_any_leading_shape_agree():
    raw = random_raw(format_by_name("Q4_K"), 6, 512, np.random.default_rng(7))
    as_rows = dequantize(torch.from_numpy(raw), "Q4_K", (6, 512))
    flat = dequantize(torch.from_numpy(raw.reshape(-1)), "Q4_K", (6, 512))
    three_d = dequantize(torch.from_numpy(raw), GGMLQuantizationType.Q4_K, (2, 3, 512))
    assert torch.equal(as_rows, flat)
    assert torch.equal(three_d.reshape(6, 512), as_rows)
    vector = dequantize(torch.from_numpy(raw[0]), int(GGMLQuantizationType.Q4_K), (512,))
    assert torch.equal(vector, as_rows[0])


def test_q4_0_block_decodes_to_known_values():
    # d = 1.0; byte i holds quant i in its low nibble and quant 16 + i in its high one.
    qs = [i | ((15 - i) << 4) for i in range(16)]
    raw = torch.tensor([0x00, 0x3C, *qs], dtype=torch.uint8)
    expected = [float(i - 8) for i in range(16)] + [float(7 - i) for i in range(16)]
    assert dequantize(raw, "Q4_0", (32,)).tolist() == expected


def test_q8_0_block_decodes_to_known_values():
    # d = 0.5 (fp16 0x3800); quants are the signed bytes -16..15.
    qs = np.arange(-16, 16, dtype=np.int8).view(np.uint8).tolist()
    raw = torch.tensor([0x00, 0x38, *qs], dtype=torch.uint8)
    assert dequantize(raw, "Q8_0", (1, 32)).tolist() == [[q / 2 for q in range(-16, 16)]]


def pack_scale_min_k4(scales: list[int], mins: list[int]) -> list[int]:
    """The inverse of unpack_scale_min_k4, written from the ggml layout."""
    packed = [0] * 12
    for j in range(4):
        packed[j] = scales[j] | ((scales[j + 4] >> 4) << 6)
        packed[j + 4] = mins[j] | ((mins[j + 4] >> 4) << 6)
        packed[j + 8] = (scales[j + 4] & 0x0F) | ((mins[j + 4] & 0x0F) << 4)
    return packed


def test_unpack_scale_min_k4_recovers_six_bit_values():
    scales = [63, 1, 2, 3, 60, 33, 17, 5]
    mins = [0, 62, 4, 8, 48, 31, 63, 9]
    packed = torch.tensor([pack_scale_min_k4(scales, mins)], dtype=torch.uint8)
    got_scales, got_mins = unpack_scale_min_k4(packed)
    assert got_scales.tolist() == [scales]
    assert got_mins.tolist() == [mins]


def test_unpack_scale_min_k4_matches_reference_on_random_bytes():
    packed = np.random.default_rng(3).integers(0, 256, size=(64, 12), dtype=np.uint8)
    ref_scales, ref_mins = ReferenceQ4K.get_scale_min(packed)
    got_scales, got_mins = unpack_scale_min_k4(torch.from_numpy(packed))
    assert np.array_equal(got_scales.numpy(), ref_scales)
    assert np.array_equal(got_mins.numpy(), ref_mins)


def test_unpack_scales_q3_k_is_signed_six_bit():
    # Low nibbles 0xF everywhere, top bits 0b11 for scales 0-3 only: 63 - 32 and 15 - 32.
    packed = torch.tensor([[0xFF] * 8 + [0x03] * 4], dtype=torch.uint8)
    assert unpack_scales_q3_k(packed).tolist() == [[31] * 4 + [-17] * 12]
    assert unpack_scales_q3_k(torch.zeros(1, 12, dtype=torch.uint8)).tolist() == [[-32] * 16]


def test_format_table_matches_gguf():
    for fmt in SUPPORTED_FORMATS:
        assert (fmt.block_size, fmt.type_size) == GGML_QUANT_SIZES[fmt.ggml_type]
        assert format_by_id(int(fmt.ggml_type)) is fmt
        assert format_by_name(fmt.name.lower()) is fmt
    assert format_by_name("Q4_K").bytes_per_row(512) == 288


def test_bad_input_raises_clear_value_errors():
    raw = torch.zeros(144, dtype=torch.uint8)
    with pytest.raises(ValueError, match="IQ2_XXS is not supported"):
        dequantize(raw, GGMLQuantizationType.IQ2_XXS, (256,))
    with pytest.raises(ValueError, match="unknown GGML type id 9999"):
        format_by_id(9999)
    with pytest.raises(ValueError, match="'Q9_9' is not supported"):
        format_by_name("Q9_9")
    with pytest.raises(ValueError, match="must be uint8"):
        dequantize(raw.to(torch.int8), "Q4_K", (256,))
    with pytest.raises(ValueError, match="needs 288 bytes, raw has 144"):
        dequantize(raw, "Q4_K", (512,))
    with pytest.raises(ValueError, match="not a positive multiple of the block size 256"):
        dequantize(raw, "Q4_K", (1, 640))
    with pytest.raises(ValueError, match="positive dims"):
        dequantize(raw, "Q4_K", ())
    with pytest.raises(ValueError, match=r"expected uint8 \[n, 12\] packed scales"):
        unpack_scale_min_k4(torch.zeros(1, 11, dtype=torch.uint8))


BUNDLED = {
    # file -> the GGML types it is made of, so the test proves which decoders it ran
    "gemma3_270m": (gemma3_270m_gguf_path, {"F32", "Q8_0", "Q5_0", "Q4_K", "Q6_K"}),
    "smollm2_135m": (smollm2_135m_gguf_path, {"F32", "Q8_0", "Q4_1"}),
}


@pytest.mark.parametrize("model", BUNDLED)
def test_every_tensor_of_bundled_gguf_matches_reference(model):
    path_fn, expected_types = BUNDLED[model]
    reader = GGUFReader(path_fn())
    mismatched, seen_types = [], set()
    for tensor in reader.tensors:
        seen_types.add(tensor.tensor_type.name)
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        # np.array copies the read-only memory map, which torch cannot wrap without a warning.
        raw = torch.from_numpy(np.array(tensor.data).view(np.uint8))
        ours = dequantize(raw, tensor.tensor_type, shape).numpy()
        expected = reference_dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        if np.isnan(ours).any() or not np.array_equal(ours.view(np.int32), expected.view(np.int32)):
            mismatched.append(tensor.name)
    assert seen_types == expected_types
    assert mismatched == []
