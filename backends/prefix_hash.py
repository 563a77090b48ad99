"""Chain hashes of full KV blocks, stable across processes and machines. Pure Python.

hash(block i) = sha256(hash(block i-1) || model fingerprint || token ids of block i)

The fingerprint names the weights, the engine kind, the KV dtype and the block size, so two
engines never share blocks, and the Redis tier can key on the same hashes in every replica.
"""

from __future__ import annotations

import hashlib
import struct

ROOT_HASH = b"\x00" * 32  # parent of a sequence's first block


def block_hash(parent: bytes, fingerprint: str, token_ids: list[int] | tuple[int, ...]) -> bytes:
    h = hashlib.sha256()
    h.update(parent)
    h.update(fingerprint.encode())
    h.update(struct.pack(f"<{len(token_ids)}I", *token_ids))
    return h.digest()

