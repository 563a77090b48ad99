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
    block_size: int  # tokens per KV block
    # Decode-only steps: padded [B, max_context] gather indices and masks, built on first use.
    _padded: dict = field(default_factory=dict, compare=False, repr=False)
    # Per-step values the layers share (RoPE tables, page lists), built by the first layer.
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    def memo(self, key, build):
        """build() once per step for `key`; every later layer gets the same object."""
        value = self._memo.get(key)
        if value is None:
            value = self._memo[key] = build()
        return value

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
        positions: list[int] = []
        write_blocks: list[int] = []
        for n, ctx, table in zip(num_new, context_lens, block_tables):
            if n <= 0 or n > ctx:
                raise ValueError(f"need 0 < new tokens ({n}) <= context length ({ctx})")
            if len(table) * block_size < ctx:
                raise ValueError(f"block table of {len(table)} blocks cannot hold {ctx} tokens")
            starts.append(starts[-1] + n)
            new_positions = range(ctx - n, ctx)
            positions.extend(new_positions)
            write_blocks.extend(table[p // block_size] for p in new_positions)
        positions_t = torch.tensor(positions, dtype=torch.int64)
        return cls(
            query_starts=tuple(starts),
            context_lens=tuple(context_lens),
            block_tables=tuple(tuple(t) for t in block_tables),
            positions=positions_t,
            write_blocks=torch.tensor(write_blocks, dtype=torch.int64),
            write_offsets=positions_t % block_size,
            block_size=block_size,
        )

    def read_pages(self, i: int, first: int) -> tuple[torch.Tensor, int]:
        """(blocks, skip) holding sequence i's positions [first, context_len): gathering these
        whole blocks and dropping the first `skip` slots leaves exactly those positions.

        Gathering whole pages with one index_select is cheaper than a per-position gather."""
        start = first // self.block_size
        return self.table(i)[start:], first - start * self.block_size

    def table(self, i: int) -> torch.Tensor:
        """Sequence i's blocks up to the one holding its last token, as a tensor."""
        ctx = self.context_lens[i]
        return self.memo(("table", i), lambda: torch.tensor(
            self.block_tables[i][: -(-ctx // self.block_size)], dtype=torch.int64))

    def single_token_seqs(self) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sequence indices, their token rows [B'], block tables int64 [B', width] padded with
        block 0, context lengths int64 [B']) of the sequences with exactly one new token."""
        return self.memo("single_token", self._single_token_seqs)

    def _single_token_seqs(self):
        seqs = [i for i in range(self.num_seqs) if self.query_starts[i + 1] - self.query_starts[i] == 1]
        lens = [self.context_lens[i] for i in seqs]
        width = max((-(-n // self.block_size) for n in lens), default=1)
        padded = []
        for i in seqs:
            used = list(self.block_tables[i][: -(-self.context_lens[i] // self.block_size)])
            padded.append(used + [0] * (width - len(used)))
        tables = torch.tensor(padded, dtype=torch.int64).reshape(len(seqs), width)
        rows = torch.tensor([self.query_starts[i] for i in seqs], dtype=torch.int64)
        return seqs, rows, tables, torch.tensor(lens, dtype=torch.int64)

    def padded_decode(self, sliding_window: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(blocks [B, L], offsets [B, L], mask [B, 1, 1, L]) for one padded SDPA over all
        sequences, keeping only the keys each one attends to (the last `sliding_window`).

        Padding reads the sequence's first attended key: a written slot. Unwritten slots may hold
        any bytes (pages are recycled across engines and dtypes), even NaN, which a mask would
        not stop (NaN * 0 is NaN), so they are never read."""
        if sliding_window not in self._padded:
            lens = torch.tensor(self.context_lens, dtype=torch.int64)
            first = lens - sliding_window if sliding_window else torch.zeros_like(lens)
            first = first.clamp(min=0)
            width = int((lens - first).max())
            idx = first.unsqueeze(1) + torch.arange(width).unsqueeze(0)  # [B, L] positions
            mask = idx < lens.unsqueeze(1)
            idx = torch.where(mask, idx, first.unsqueeze(1))
            blocks = torch.stack([self.table(i)[row // self.block_size] for i, row in enumerate(idx)])
            offsets = idx % self.block_size
            self._padded[sliding_window] = (blocks, offsets, mask[:, None, None, :])
        return self._padded[sliding_window]
