"""The KV blob format: exact round trips, and every kind of damage or mismatch is refused."""

from __future__ import annotations

import struct

import pytest
import torch

from backends.kv_blob import (FORMAT_VERSION, MAGIC, BlobError, blob_bytes, blob_key, decode_block,
                              encode_block, header_bytes)

FINGERPRINT = "b179c9523d0e6a0f98a330c7562b6827:full_precision:torch.bfloat16:16"
SHAPE = (30, 2, 16, 3, 64)  # SmolLM2: layers, K|V, block size, KV heads, head dim
HASH = bytes(range(32))


def _kv(dtype: torch.dtype, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(shape, generator=generator) * 3).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_round_trip_is_bit_exact(dtype: torch.dtype) -> None:
    kv = _kv(dtype)
    blob = encode_block(kv, FINGERPRINT, HASH)
    assert len(blob) == blob_bytes(FINGERPRINT, SHAPE, dtype)
    assert len(blob) == header_bytes(FINGERPRINT, len(SHAPE)) + kv.numel() * kv.element_size()
    out = decode_block(blob, FINGERPRINT, HASH, SHAPE)
    assert out.dtype == dtype and out.shape == SHAPE
    assert torch.equal(out.view(torch.uint8), kv.view(torch.uint8))


def test_float32_kv_stored_as_bfloat16_is_the_rounded_tensor() -> None:
    kv = _kv(torch.float32)
    out = decode_block(encode_block(kv.to(torch.bfloat16), FINGERPRINT, HASH), FINGERPRINT, HASH, SHAPE)
    assert torch.equal(out, kv.to(torch.bfloat16))
    assert (out.float() - kv).abs().max() <= kv.abs().max() * 2**-8  # bfloat16: 8 bits of mantissa


def test_a_non_contiguous_block_is_stored_in_c_order() -> None:
    pages = _kv(torch.bfloat16, (3, *SHAPE))
    kv = pages.transpose(0, 1)[:, 1]  # a strided view of page 1
    out = decode_block(encode_block(kv, FINGERPRINT, HASH), FINGERPRINT, HASH, SHAPE)
    assert torch.equal(out, pages[1])


def test_header_fields() -> None:
    blob = encode_block(_kv(torch.float16), FINGERPRINT, HASH)
    assert blob[:4] == MAGIC == b"RGKV"
    assert struct.unpack_from("<HBBH32s", blob, 4) == (FORMAT_VERSION, 2, len(SHAPE), len(FINGERPRINT), HASH)
    assert blob[42:42 + len(FINGERPRINT)] == FINGERPRINT.encode()
    assert struct.unpack_from("<5I", blob, 42 + len(FINGERPRINT)) == SHAPE


def _flip(blob: bytes, offset: int) -> bytes:
    damaged = bytearray(blob)
    damaged[offset] ^= 0xFF
    return bytes(damaged)


def test_every_flipped_byte_is_refused() -> None:
    kv = _kv(torch.bfloat16, (2, 2, 4, 1, 8))  # small, so every offset is tried
    blob = encode_block(kv, FINGERPRINT, HASH)
    for offset in range(len(blob)):
        with pytest.raises(BlobError):
            decode_block(_flip(blob, offset), FINGERPRINT, HASH, tuple(kv.shape))


@pytest.mark.parametrize("where, reason", [
    (0, "magic"),  # first magic byte
    (4, "version"),  # low byte of the version
    (6, "dtype"),  # dtype code 1 -> 254
    (10, "block_hash"),  # first byte of the stored hash
    (42, "fingerprint"),  # first fingerprint byte
    (42 + len(FINGERPRINT), "shape"),  # first dimension
    (-1, "checksum"),  # last payload byte
    (header_bytes(FINGERPRINT, 5) - 1, "checksum"),  # last checksum byte
])
def test_damage_names_the_field(where: int, reason: str) -> None:
    blob = encode_block(_kv(torch.bfloat16), FINGERPRINT, HASH)
    with pytest.raises(BlobError) as error:
        decode_block(_flip(blob, where % len(blob)), FINGERPRINT, HASH, SHAPE)
    assert error.value.reason == reason


def test_another_model_block_or_shape_is_refused() -> None:
    blob = encode_block(_kv(torch.bfloat16), FINGERPRINT, HASH)
    cases = [
        ((FINGERPRINT.replace("bfloat16", "float32"), HASH, SHAPE), "fingerprint"),
        ((FINGERPRINT, bytes(32), SHAPE), "block_hash"),
        ((FINGERPRINT, HASH, (30, 2, 16, 3, 32)), "shape"),
    ]
    for args, reason in cases:
        with pytest.raises(BlobError) as error:
            decode_block(blob, *args)
        assert error.value.reason == reason


def test_an_unknown_version_is_refused_even_with_a_valid_checksum() -> None:
    # A future writer's blob: everything consistent, only the version is one this reader lacks.
    blob = bytearray(encode_block(_kv(torch.bfloat16), FINGERPRINT, HASH))
    blob[4:6] = struct.pack("<H", FORMAT_VERSION + 1)
    with pytest.raises(BlobError) as error:
        decode_block(bytes(blob), FINGERPRINT, HASH, SHAPE)
    assert error.value.reason == "version"


@pytest.mark.parametrize("keep", [0, 10, 60, 200, -1])
def test_a_truncated_blob_is_refused(keep: int) -> None:
    blob = encode_block(_kv(torch.bfloat16), FINGERPRINT, HASH)
    with pytest.raises(BlobError) as error:
        decode_block(blob[:keep], FINGERPRINT, HASH, SHAPE)
    assert error.value.reason == "length"


def test_keys_are_namespaced_by_version_and_fingerprint() -> None:
    key = blob_key(FINGERPRINT, HASH)
    prefix, version, model, block = key.rsplit(":", 3)
    assert prefix == "routegate:kv" and version == f"v{FORMAT_VERSION}"
    assert len(model) == 16 and block == HASH.hex()
    assert blob_key(FINGERPRINT.replace("bfloat16", "float32"), HASH) != key
    assert blob_key(FINGERPRINT, bytes(32)) != key


def test_encode_rejects_what_it_cannot_store() -> None:
    with pytest.raises(ValueError, match="kv dtype"):
        encode_block(torch.zeros(SHAPE, dtype=torch.int8), FINGERPRINT, HASH)
    with pytest.raises(ValueError, match="block_hash must be 32 bytes"):
        encode_block(_kv(torch.bfloat16), FINGERPRINT, b"short")
