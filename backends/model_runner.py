"""Turns a scheduled step into tensors, runs the model over the paged KV cache, samples."""

from __future__ import annotations

import torch
from torch import nn

from backends.attention_metadata import AttentionMetadata
from backends.paged_kv_cache import PagedKVCache
from backends.sampler import SamplingRow, sample
from backends.scheduler import SchedulerOutput
from backends.token_logprobs import TokenLogprobs


class ModelRunner:
    def __init__(self, model: nn.Module, kv_cache: PagedKVCache,
                 eos_token_ids: frozenset[int] = frozenset()) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.eos_token_ids = eos_token_ids  # masked by the sampler until min_tokens are generated

    def forward(self, input_ids: list[int], num_new: list[int], context_lens: list[int],
                block_tables: list[list[int]]) -> tuple[torch.Tensor, AttentionMetadata]:
        """Hidden states [T, hidden] for a flat batch of new tokens of several sequences."""
        meta = AttentionMetadata.build(num_new, context_lens, block_tables, self.kv_cache.block_size)
        with torch.inference_mode():
            hidden = self.model(torch.tensor(input_ids, dtype=torch.int64), meta, self.kv_cache.layers)
        return hidden, meta

    def run(self, step: SchedulerOutput) -> dict[str, tuple[int, TokenLogprobs | None]]:
        """Run one step; return the sampled token (and its logprobs, if asked for) of every
        sequence whose chunk reached its end."""
        scheduled = step.scheduled
        input_ids: list[int] = []
        for item in scheduled:
            start = item.seq.num_computed_tokens
            input_ids.extend(item.seq.token_ids[start:start + item.num_new_tokens])
        hidden, meta = self.forward(
            input_ids,
            [item.num_new_tokens for item in scheduled],
            [item.seq.num_computed_tokens + item.num_new_tokens for item in scheduled],
            [item.seq.block_table for item in scheduled],
        )
        sampling = [i for i, item in enumerate(scheduled) if item.samples]
        if not sampling:
            return {}
        last = torch.tensor([meta.query_starts[i + 1] - 1 for i in sampling], dtype=torch.int64)
        with torch.inference_mode():
            logits = self.model.compute_logits(hidden[last])
        seqs = [scheduled[i].seq for i in sampling]
        rows = [SamplingRow(s.params, s.generator, s.prompt_token_ids, s.output_token_ids) for s in seqs]
        out = sample(logits, rows, self.eos_token_ids)
        return {s.request_id: (t, lp) for s, t, lp in zip(seqs, out.token_ids, out.logprobs)}
