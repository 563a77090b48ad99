"""The versioned byte format of one KV block in the Redis tier, and its key.

    offset  size  field
    0       4     magic b"RGKV"
    4       2     format version (little endian; FORMAT_VERSION)
    6       1     stored dtype code (DTYPE_CODES)
    7       1     number of dimensions n
    8       2     fingerprint length f
    10      32    chain hash of the block (prefix_hash.block_hash)
    42      f     model fingerprint, UTF-8 (weights digest : engine kind : KV dtype : block size)
    42+f    4n    shape, uint32 each: [layers, K|V, block_size, kv_heads, head_dim]
    ...     16    blake2b-128 of every byte before this field and of the payload
    ...           payload: the block's K/V in the stored dtype, C order

A blob is used only if every field matches what the reader expects and the checksum holds;
anything else raises BlobError with a short `reason`, which the tier counts. The hash and the
fingerprint are inside the blob (not only in the key), so a value written under the wrong key
is rejected too.
"""

from __future__ import annotations

import hashlib
import math
import struct

import torch

MAGIC = b"RGKV"
FORMAT_VERSION = 1
DTYPE_CODES = {torch.bfloat16: 1, torch.float16: 2, torch.float32: 3}
_DTYPES_BY_CODE = {code: dtype for dtype, code in DTYPE_CODES.items()}
_FIXED = struct.Struct("<4sHBBH32s")  # magic, version, dtype code, ndim, fingerprint length, hash
_CHECKSUM_BYTES = 16
KEY_PREFIX = "routegate:kv"


class BlobError(ValueError):
    """A blob that must not be used; `reason` names the first field that failed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # magic | version | dtype | fingerprint | block_hash | shape | length | checksum


def blob_key(fingerprint: str, block_hash: bytes) -> str:
    """The Redis key of a block: namespaced by format version and model fingerprint."""
    digest = hashlib.blake2b(fingerprint.encode(), digest_size=8).hexdigest()
    return f"{KEY_PREFIX}:v{FORMAT_VERSION}:{digest}:{block_hash.hex()}"


def header_bytes(fingerprint: str, ndim: int) -> int:
    """Bytes before the payload, for a fingerprint and a shape of ndim dimensions."""
    return _FIXED.size + len(fingerprint.encode()) + 4 * ndim + _CHECKSUM_BYTES


def blob_bytes(fingerprint: str, shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Size of the blob of one block (header and payload)."""
    element = torch.empty((), dtype=dtype).element_size()
    return header_bytes(fingerprint, len(shape)) + math.prod(shape) * element


def encode_block(kv: torch.Tensor, fingerprint: str, block_hash: bytes) -> bytes:
    """The blob of one block's K/V, stored in kv's dtype (convert before calling)."""
    if kv.dtype not in DTYPE_CODES:
        raise ValueError(f"kv dtype must be one of {sorted(map(str, DTYPE_CODES))}, got {kv.dtype}")
    if len(block_hash) != 32:
        raise ValueError(f"block_hash must be 32 bytes, got {len(block_hash)}")
    fp = fingerprint.encode()
    head = _FIXED.pack(MAGIC, FORMAT_VERSION, DTYPE_CODES[kv.dtype], kv.dim(), len(fp), block_hash)
    head += fp + struct.pack(f"<{kv.dim()}I", *kv.shape)
    payload = kv.contiguous().view(torch.uint8).numpy().data
    checksum = hashlib.blake2b(head, digest_size=_CHECKSUM_BYTES)
    checksum.update(payload)
    return b"".join((head, checksum.digest(), payload))


def decode_block(blob: bytes, fingerprint: str, block_hash: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    """The K/V of a blob (in its stored dtype) after checking it is exactly the block asked for."""
    view = memoryview(blob)
    if len(view) < _FIXED.size:
        raise BlobError("length", f"{len(view)} bytes is shorter than the fixed header")
    magic, version, code, ndim, fp_len, stored_hash = _FIXED.unpack_from(view)
    if magic != MAGIC:
        raise BlobError("magic", f"{magic!r} is not {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise BlobError("version", f"format version {version}, this reader knows {FORMAT_VERSION}")
    if code not in _DTYPES_BY_CODE:
        raise BlobError("dtype", f"unknown dtype code {code}")
    dtype = _DTYPES_BY_CODE[code]
    head_len = _FIXED.size + fp_len + 4 * ndim
    if len(view) < head_len + _CHECKSUM_BYTES:
        raise BlobError("length", f"{len(view)} bytes is shorter than its header")
    stored_fp = bytes(view[_FIXED.size:_FIXED.size + fp_len])
    if stored_fp != fingerprint.encode():
        raise BlobError("fingerprint", f"blob of {stored_fp[:80]!r}, expected {fingerprint[:80]!r}")
    if stored_hash != block_hash:
        raise BlobError("block_hash", f"blob of block {stored_hash.hex()[:16]}, expected {block_hash.hex()[:16]}")
    stored_shape = struct.unpack_from(f"<{ndim}I", view, _FIXED.size + fp_len)
    if tuple(stored_shape) != tuple(shape):
        raise BlobError("shape", f"blob shape {stored_shape}, expected {tuple(shape)}")
    payload = view[head_len + _CHECKSUM_BYTES:]
    expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if len(payload) != expected:
        raise BlobError("length", f"payload of {len(payload)} bytes, expected {expected}")
    checksum = hashlib.blake2b(view[:head_len], digest_size=_CHECKSUM_BYTES)
    checksum.update(payload)
    if checksum.digest() != view[head_len:head_len + _CHECKSUM_BYTES]:
        raise BlobError("checksum", "the blob's bytes do not match its checksum")
    # bytearray: a writable copy, so the tensor owns its memory and torch does not warn.
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).view(dtype).view(shape)
