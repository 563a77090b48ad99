"""Per-step description of where each sequence's tokens sit in the flat batch and the KV pages.

The model runs on a flat batch of T new tokens from B sequences. Sequence i owns the tokens
[query_starts[i], query_starts[i+1]) of that batch, sits at positions
[context_lens[i] - num_new, context_lens[i]) and reads K/V through its block table:

    token position p of sequence i  ->  (block block_tables[i][p // block_size],
                                          slot p % block_size)

Everything the attention layers index with is built once per step here, not once per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class AttentionMetadata:
    query_starts: tuple[int, ...]  # B + 1 offsets into the flat batch of new tokens
    context_lens: tuple[int, ...]  # per sequence: tokens in its KV after this step (cached + new)
    block_tables: tuple[tuple[int, ...], ...]  # per sequence: the KV blocks it reads, in order
    positions: torch.Tensor  # [T] int64: each new token's position in its sequence
    write_blocks: torch.Tensor  # [T] int64: the block each new token's K/V is written to
    write_offsets: torch.Tensor  # [T] int64: its slot inside that block
    read_blocks: tuple[torch.Tensor, ...]  # per sequence [context_len]: block of each position
    read_offsets: tuple[torch.Tensor, ...]  # per sequence [context_len]: slot of each position
    block_size: int  # tokens per KV block
    # Decode-only steps: padded [B, max_context] gather indices and masks, built on first use.
    _padded: dict = field(default_factory=dict, compare=False, repr=False)

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
        """Derive positions and K/V indices from per-sequence counts and block tables."""
        starts = [0]
        positions, read_blocks, read_offsets = [], [], []
        for n, ctx, table in zip(num_new, context_lens, block_tables):
            if n <= 0 or n > ctx:
                raise ValueError(f"need 0 < new tokens ({n}) <= context length ({ctx})")
            if len(table) * block_size < ctx:
                raise ValueError(f"block table of {len(table)} blocks cannot hold {ctx} tokens")
            starts.append(starts[-1] + n)
            pos = torch.arange(ctx)
            blocks = torch.tensor(table[:-(-ctx // block_size)], dtype=torch.int64)
            read_blocks.append(blocks.repeat_interleave(block_size)[:ctx])
            read_offsets.append(pos % block_size)
            positions.append(pos[ctx - n:])
        write_blocks = torch.cat([b[-n:] for b, n in zip(read_blocks, num_new)])
        write_offsets = torch.cat([o[-n:] for o, n in zip(read_offsets, num_new)])
        return cls(
            query_starts=tuple(starts),
            context_lens=tuple(context_lens),
            block_tables=tuple(tuple(t) for t in block_tables),
            positions=torch.cat(positions),
            write_blocks=write_blocks,
            write_offsets=write_offsets,
            read_blocks=tuple(read_blocks),
            read_offsets=tuple(read_offsets),
            block_size=block_size,
        )

    def padded_decode(self, sliding_window: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(blocks [B, L], offsets [B, L], mask [B, 1, 1, L]) for one padded SDPA over all
        sequences, keeping only the keys each one attends to (the last `sliding_window`)."""
        if sliding_window not in self._padded:
            lens = torch.tensor(self.context_lens, dtype=torch.int64)
            first = lens - sliding_window if sliding_window else torch.zeros_like(lens)
            first = first.clamp(min=0)
            width = int((lens - first).max())
            idx = first.unsqueeze(1) + torch.arange(width).unsqueeze(0)  # [B, L] positions
            mask = idx < lens.unsqueeze(1)
            idx = torch.where(mask, idx, torch.zeros_like(idx))  # padding reads position 0
            blocks = torch.stack([rb[i] for rb, i in zip(self.read_blocks, idx)])
            offsets = idx % self.block_size
            self._padded[sliding_window] = (blocks, offsets, mask[:, None, None, :])
        return self._padded[sliding_window]
