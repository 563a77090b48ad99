"""The KV block pool: fixed-size blocks, reference counts, prefix-cache hashes, LRU eviction.
Pure Python; one pool serves every in-process engine (blocks are pages of one byte budget).

Every block is in exactly one of two states:

    held    ref_count > 0, referenced by the block tables of one or more sequences
    free    ref_count == 0, in the free queue; it may still carry a hash ("cached") and be
            revived by a prefix hit until allocate() hands it out again and evicts that hash

The free queue is in LRU order: allocate() takes from the front; free() appends to the back.
Sequences free their blocks tail first, so the end of a prompt is evicted before its start.
"""

from __future__ import annotations

from collections import OrderedDict


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self._ref_counts = [0] * num_blocks
        self._hashes: list[bytes | None] = [None] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[bytes, int] = {}  # block hash -> block id
        self.num_evictions = 0

    @property
    def num_free(self) -> int:
        """Blocks allocate() can hand out now (free, cached or not)."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached_free(self) -> int:
        """Free blocks that still hold a cached prefix."""
        return sum(1 for b in self._free if self._hashes[b] is not None)

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        """Take n blocks from the front of the free queue (evicting their hashes), ref_count 1."""
        if n > len(self._free):
            raise MemoryError(f"asked for {n} KV blocks, {len(self._free)} free")
        ids = []
        for _ in range(n):
            block, _ = self._free.popitem(last=False)
            self._evict(block)
            self._ref_counts[block] = 1
            ids.append(block)
        return ids

    def free(self, block_ids: list[int]) -> None:
        """Drop one reference to each block, in the given order; unheld blocks join the queue."""
        for b in block_ids:
            if self._ref_counts[b] <= 0:
                raise RuntimeError(f"block {b} freed while not held")
            self._ref_counts[b] -= 1
            if self._ref_counts[b] == 0:
                self._free[b] = None

    def lookup(self, hashes: list[bytes]) -> list[int]:
        """Blocks of the longest cached prefix of `hashes` (not yet acquired)."""
        hits = []
        for h in hashes:
            block = self._cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def acquire(self, block_ids: list[int]) -> None:
        """Add a reference to each (cached) block, taking it off the free queue if it was there."""
        for b in block_ids:
            if self._ref_counts[b] == 0:
                del self._free[b]
            self._ref_counts[b] += 1

    def cache(self, block_id: int, block_hash: bytes) -> None:
        """Record that a held, full block holds the prefix `block_hash`.

        If another block already holds that prefix (two sequences computed it at once), the
        first stays the cached one and this block is freed as a plain block later.
        """
        if self._ref_counts[block_id] <= 0:
            raise RuntimeError(f"block {block_id} cached while not held")
        if block_hash not in self._cached and self._hashes[block_id] is None:
            self._cached[block_hash] = block_id
            self._hashes[block_id] = block_hash

    def block_hash(self, block_id: int) -> bytes | None:
        return self._hashes[block_id]

    def ref_count(self, block_id: int) -> int:
        return self._ref_counts[block_id]

    def free_queue(self) -> list[int]:
        """The free queue, next to be allocated first (for tests and debugging)."""
        return list(self._free)

    def _evict(self, block: int) -> None:
        h = self._hashes[block]
        if h is not None:
            del self._cached[h]
            self._hashes[block] = None
            self.num_evictions += 1
