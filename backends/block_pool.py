"""The KV block pool: fixed-size blocks, reference counts, a free queue. Pure Python.

Block ids index the pages of the paged KV tensors. A block is either free (in the queue) or
held by one or more sequences (ref_count > 0). Invariant: every id is in exactly one of the two.
"""

from __future__ import annotations

from collections import deque


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._ref_counts = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        """Take n free blocks (lowest-recently-freed first), each with ref_count 1."""
        if n > len(self._free):
            raise MemoryError(f"asked for {n} KV blocks, {len(self._free)} free")
        ids = [self._free.popleft() for _ in range(n)]
        for i in ids:
            self._ref_counts[i] = 1
        return ids

    def free(self, block_ids: list[int]) -> None:
        """Drop one reference to each block; blocks nobody holds return to the queue."""
        for i in block_ids:
            if self._ref_counts[i] <= 0:
                raise RuntimeError(f"block {i} freed while not held")
            self._ref_counts[i] -= 1
            if self._ref_counts[i] == 0:
                self._free.append(i)

    def ref_count(self, block_id: int) -> int:
        return self._ref_counts[block_id]
