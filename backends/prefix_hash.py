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


def chain_hashes(token_ids: list[int], block_size: int, fingerprint: str, start: int = 0,
                 parent: bytes = ROOT_HASH) -> list[bytes]:
    """Hashes of the full blocks of token_ids from block index `start` (whose parent is given)."""
    hashes = []
    for first in range(start * block_size, len(token_ids) - block_size + 1, block_size):
        parent = block_hash(parent, fingerprint, token_ids[first:first + block_size])
        hashes.append(parent)
    return hashes
