"""Block pack/unpack: pack(unpack(raw)) == raw byte for byte, and the unpacked codes mean
what pack_blocks.py says (codes_to_float equals gguf.quants.dequantize bit for bit).

Random blocks of every block format, then every tensor of both bundled GGUF files.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf.quants import dequantize as reference_dequantize

from backends.bundled_models import gemma3_270m_gguf_path, smollm2_135m_gguf_path
from backends.gguf_file import GGUFFile
from backends.quantization.formats import format_by_name
from backends.quantization.pack_blocks import BlockCodes, codes_to_float, pack_blocks, unpack_blocks
from tests.test_dequantize import random_raw

BLOCK_FORMATS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.int32), b.view(np.int32))


@pytest.mark.parametrize("name", BLOCK_FORMATS)
def test_random_blocks_round_trip_and_decode_bit_exact(name):
    fmt = format_by_name(name)
    raw = random_raw(fmt, 37, 4 * 256, np.random.default_rng(99))
    codes = unpack_blocks(raw, name)
    assert codes.num_blocks == 37 * 4 * 256 // fmt.block_size
    assert np.array_equal(pack_blocks(codes), raw.reshape(-1, fmt.type_size))
    expected = reference_dequantize(raw, fmt.ggml_type).reshape(codes.num_blocks, -1)
    assert same_bits(codes_to_float(codes), expected)


@pytest.mark.parametrize("name", BLOCK_FORMATS)
def test_random_codes_pack_to_bytes_that_decode_to_them(name):
    # The other direction: arbitrary in-range fields -> bytes -> reference decoder.
    fmt = format_by_name(name)
    rng = np.random.default_rng(5)
    n = 50
    raw = random_raw(fmt, n, fmt.block_size, rng)  # a template: only its field shapes are used
    template = unpack_blocks(raw, name)
    high = {"Q4_0": 15, "Q4_1": 15, "Q5_0": 31, "Q5_1": 31, "Q2_K": 3, "Q3_K": 7, "Q4_K": 15, "Q5_K": 31,
            "Q6_K": 63}
    if name == "Q8_0":
        q = rng.integers(-128, 128, size=template.codes.shape).astype(np.int8)
    else:
        q = rng.integers(0, high[name] + 1, size=template.codes.shape).astype(np.uint8)

    def like(field, low, top):
        if field is None:
            return None
        return rng.integers(low, top + 1, size=field.shape).astype(field.dtype)

    sub_high = 15 if name == "Q2_K" else 63
    codes = BlockCodes(fmt, q, template.d, template.m,
                       scales=like(template.scales, -128 if name == "Q6_K" else 0, 127 if name == "Q6_K" else sub_high),
                       mins=like(template.mins, 0, sub_high))
    packed = pack_blocks(codes)
    assert np.array_equal(unpack_blocks(packed, name).codes, q)
    assert same_bits(codes_to_float(codes), reference_dequantize(packed, fmt.ggml_type).reshape(n, -1))


def test_q4_k_fields_land_where_ggml_puts_them():
    fmt = format_by_name("Q4_K")
    q = (np.arange(256) % 16).astype(np.uint8)[None]
    codes = BlockCodes(fmt, q, np.array([1.0], np.float16), np.array([0.5], np.float16),
                       scales=np.array([[1, 2, 3, 4, 63, 17, 32, 5]], np.uint8),
                       mins=np.array([[0, 1, 2, 3, 4, 48, 6, 7]], np.uint8))
    block = pack_blocks(codes)[0]
    assert block[0:4].tolist() == [0x00, 0x3C, 0x00, 0x38]  # d = 1.0, dmin = 0.5 as fp16
    # scale 4 = 63 = 0b111111: low nibble in byte 8, top bits in byte 0's bits 6-7
    assert block[4] == 1 | (3 << 6) and block[12] == 0x0F | (4 << 4)
    # weights 0 and 32 share byte 16: low nibble 0, high nibble 32 % 16 = 0; weight 1 and 33 -> 0x11
    assert block[16] == 0x00 and block[17] == 0x11


def test_bad_codes_raise_value_errors_naming_the_field():
    fmt = format_by_name("Q4_0")
    bad = BlockCodes(fmt, np.full((1, 32), 16, np.uint8), np.ones(1, np.float16))
    with pytest.raises(ValueError, match="Q4_0: codes must lie in 0..15, got 16..16"):
        pack_blocks(bad)
    with pytest.raises(ValueError, match="not a block-quantized format"):
        unpack_blocks(np.zeros(4, np.uint8), "F32")
    with pytest.raises(ValueError, match="not a whole number of 18-byte blocks"):
        unpack_blocks(np.zeros(20, np.uint8), "Q4_0")
    k4 = BlockCodes(format_by_name("Q4_K"), np.zeros((1, 256), np.uint8), np.ones(1, np.float16),
                    np.ones(1, np.float16), scales=np.zeros((1, 8), np.uint8), mins=None)
    with pytest.raises(ValueError, match=r"Q4_K: mins must be \[1, 8\]"):
        pack_blocks(k4)


BUNDLED = {"gemma3_270m": gemma3_270m_gguf_path, "smollm2_135m": smollm2_135m_gguf_path}


@pytest.mark.parametrize("model", BUNDLED)
def test_every_quantized_tensor_of_bundled_gguf_round_trips(model):
    gguf = GGUFFile(BUNDLED[model]())
    seen, mismatched = set(), []
    for tensor in gguf.tensors.values():
        if tensor.ggml_type.name not in BLOCK_FORMATS:
            continue
        seen.add(tensor.ggml_type.name)
        # NOTE: bytes only; what the codes mean is pinned on random blocks above, and
        # test_dequantize.py decodes every bundled tensor against the reference already.
        if not np.array_equal(pack_blocks(unpack_blocks(tensor.data, tensor.ggml_type)).reshape(-1),
                              tensor.data.reshape(-1)):
            mismatched.append(tensor.name)
    assert seen == ({"Q8_0", "Q5_0", "Q4_K", "Q6_K"} if model == "gemma3_270m" else {"Q8_0", "Q4_1"})
    assert mismatched == []
