"""Perplexity of an engine's model over a text, with llama.cpp's windowing rule.

    result = perplexity(engine, token_ids, ctx=512)
    print(result.perplexity)

The rule (llama.cpp's `llama-perplexity`): cut the tokens into non-overlapping windows of `ctx`
tokens (a shorter tail is dropped); where the model adds BOS, the first token of every window
is replaced by BOS; each window is evaluated from scratch, and only the second half is scored:
the log-probability of token j+1 given tokens 0..j of its window, for j = ctx//2 .. ctx-2
(ctx//2 - 1 scores per window, at least half a window of context behind each). Perplexity is
exp(mean negative log-likelihood) over all scored tokens. Log-softmax runs in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from backends.engine import Engine

LOGITS_CHUNK = 64  # positions whose logits exist at once (Gemma: 64 x 262,144 floats = 64 MiB)


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float  # exp(mean_nll)
    mean_nll: float  # mean negative log-likelihood (nats) of the scored tokens
    num_scored: int  # tokens whose log-probability entered the mean
    num_windows: int  # windows of ctx tokens evaluated
    ctx: int  # window length


def windows(token_ids: list[int], ctx: int, bos_token_id: int | None) -> list[list[int]]:
    """The non-overlapping ctx-token windows of the rule, BOS first where the model wants it."""
    if ctx < 4:
        raise ValueError(f"ctx must be >= 4, got {ctx}")
    if len(token_ids) < ctx:
        raise ValueError(f"the text has {len(token_ids)} tokens, fewer than one window of ctx={ctx}")
    out = []
    for start in range(0, len(token_ids) - ctx + 1, ctx):
        window = list(token_ids[start:start + ctx])
        if bos_token_id is not None:
            window[0] = bos_token_id
        out.append(window)
    return out


def scored_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-probabilities (float64) of targets [n] under logits [n, vocab]."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -logp.gather(1, targets.view(-1, 1)).squeeze(1)


def window_nll(engine: "Engine", window: list[int]) -> torch.Tensor:
    """The scored negative log-likelihoods of one window through the engine's paged path."""
    first = len(window) // 2
    hidden = _hidden_states(engine, window)
    targets = torch.tensor(window[first + 1:], dtype=torch.int64)
    parts = []
    with torch.inference_mode():
        for start in range(first, len(window) - 1, LOGITS_CHUNK):
            stop = min(start + LOGITS_CHUNK, len(window) - 1)
            logits = engine.runner.model.compute_logits(hidden[start:stop])
            parts.append(scored_nll(logits, targets[start - first:stop - first]))
    return torch.cat(parts)


def _hidden_states(engine: "Engine", token_ids: list[int]) -> torch.Tensor:
    """Final hidden states [len, hidden] of one sequence, in the engine's prefill chunks.

    NOTE: like Engine.score, but without computing logits for every position (half of them
    are not scored, and Gemma's 262,144-wide logits of a 512-token window would be 512 MiB).
    """
    if not 0 < len(token_ids) <= engine.max_model_len:
        raise ValueError(f"ctx must be at most the engine's max_model_len ({engine.max_model_len})")
    blocks = engine.pool.blocks
    num_blocks = -(-len(token_ids) // engine.block_size)
    if not blocks.can_allocate(num_blocks):
        raise MemoryError("not enough free KV blocks for one perplexity window")
    table = blocks.allocate(num_blocks)
    try:
        chunk = engine.config.max_num_batched_tokens
        parts = []
        for start in range(0, len(token_ids), chunk):
            ids = token_ids[start:start + chunk]
            hidden, _ = engine.runner.forward(ids, [len(ids)], [start + len(ids)], [table])
            parts.append(hidden)
        return torch.cat(parts)
    finally:
        blocks.free(table[::-1])


def perplexity(engine: "Engine", token_ids: list[int], ctx: int) -> PerplexityResult:
    """Perplexity of `token_ids` (already tokenized, BOS included or not) under the rule above."""
    adds_bos = bool(engine.tokenizer.encode("", add_special=True))
    bos = engine.tokenizer.bos_token_id if adds_bos else None
    nll = torch.cat([window_nll(engine, w) for w in windows(token_ids, ctx, bos)])
    mean = float(nll.mean())
    return PerplexityResult(math.exp(mean), mean, int(nll.numel()), len(token_ids) // ctx, ctx)
