"""Per-step description of where each sequence's tokens sit in the flat batch and the KV pages.

The model runs on a flat batch of T new tokens from B sequences. Sequence i owns the tokens
[query_starts[i], query_starts[i+1]) of that batch, sits at positions
[context_lens[i] - num_new, context_lens[i]) and reads K/V through its block table:

    token position p of sequence i  ->  slot block_tables[i][p // block_size] * block_size
                                             + p % block_size
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionMetadata:
    query_starts: tuple[int, ...]  # B + 1 offsets into the flat batch of new tokens
    context_lens: tuple[int, ...]  # per sequence: tokens in its KV after this step (cached + new)
    block_tables: tuple[tuple[int, ...], ...]  # per sequence: the KV blocks it reads, in order
    slot_mapping: torch.Tensor  # [T] int64: the KV slot each new token is written to
    positions: torch.Tensor  # [T] int64: each new token's position in its sequence
    block_size: int  # tokens per KV block

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens)

    @property
    def is_decode_only(self) -> bool:
        """Every sequence contributes exactly one new token (the common decode step)."""
        return self.query_starts[-1] == self.num_seqs

    @classmethod
    def build(cls, num_new: list[int], context_lens: list[int], block_tables: list[list[int]],
              block_size: int) -> "AttentionMetadata":
        """Derive slots and positions from per-sequence counts and block tables."""
        starts = [0]
        positions: list[int] = []
        slots: list[int] = []
        for n, ctx, table in zip(num_new, context_lens, block_tables):
            if n <= 0 or n > ctx:
                raise ValueError(f"need 0 < new tokens ({n}) <= context length ({ctx})")
            if len(table) * block_size < ctx:
                raise ValueError(f"block table of {len(table)} blocks cannot hold {ctx} tokens")
            starts.append(starts[-1] + n)
            for p in range(ctx - n, ctx):
                positions.append(p)
                slots.append(table[p // block_size] * block_size + p % block_size)
        return cls(
            query_starts=tuple(starts),
            context_lens=tuple(context_lens),
            block_tables=tuple(tuple(t) for t in block_tables),
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64),
            block_size=block_size,
        )
