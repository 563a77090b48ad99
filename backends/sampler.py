"""Batched sampling: every row of a step's logits has its own parameters.

Transform order (as vLLM and HF): temperature, then top-k, then top-p on what remains.
Greedy rows (temperature 0) take the argmax and never sort. Sampled rows draw with the
Gumbel/exponential trick (argmax of p / E, E ~ Exp(1)) using the request's own generator,
so a seeded request yields the same tokens whatever shares its batch.
"""

from __future__ import annotations

import torch

from backends.sampling_params import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> list[int]:
    """logits [B, vocab] float32 -> one token id per row."""
    out = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if rows:
        idx = torch.tensor(rows, dtype=torch.int64)
        sub = logits[idx] / torch.tensor([params[i].temperature for i in rows]).unsqueeze(1)
        sub = _apply_top_k_top_p(sub, [params[i].top_k for i in rows], [params[i].top_p for i in rows])
        probs = torch.softmax(sub, dim=-1)
        noise = torch.empty_like(probs)
        for j, i in enumerate(rows):
            noise[j].exponential_(generator=generators[i])
        out[idx] = (probs / noise).argmax(dim=-1)
    return out.tolist()


def _apply_top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Mask (to -inf) what top-k and then top-p drop; rows with both off are left untouched."""
    vocab = logits.shape[-1]
    ks = torch.tensor([k if 0 < k < vocab else vocab for k in top_k])
    ps = torch.tensor(top_p, dtype=logits.dtype)
    if bool((ks == vocab).all()) and bool((ps >= 1.0).all()):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(vocab).unsqueeze(0)
    drop = rank >= ks.unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    # Keep a token if the mass strictly before it is < p: the smallest set reaching p.
    mass_before = probs.cumsum(dim=-1) - probs
    drop |= mass_before >= ps.unsqueeze(1)
    drop[:, 0] = False
    return logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
