"""Per-row logit adjustments applied before sampling: bias, penalties, min_tokens, adaptive temperature.

Bias, penalties and min_tokens touch only the few (row, token) positions a request names or has
seen, so they cost O(context length), never O(batch x vocab): each gathers flat indices
``row * vocab + token`` and updates ``logits.view(-1)`` in place.

Penalties (backends/sampling_params.py has the ranges):

- repetition (HF transformers / vLLM rule), on every distinct token of prompt + output:
  ``l = l / r if l > 0 else l * r``;
- presence and frequency (OpenAI / vLLM rule), on output tokens only, with c = the token's count
  in the output: ``l = l - frequency * c - presence * (c > 0)``.

Adaptive temperature, after "softmax is not enough (for sharp out-of-distribution)"
(Velickovic et al., arXiv 2410.01104; the rule and coefficients of the paper's JAX listing, whose
comment points to its Figure 5), applied to the next-token distribution instead of an attention
head. With p = softmax(l) of the bias/penalty-adjusted (and min_tokens-masked) logits and H = -sum_i p_i ln p_i its Shannon entropy in nats (0 ln 0 = 0; the paper's code adds
1e-9 inside the log, which changes H by at most vocab * 1e-9):

    beta = max(1, -0.037 H^4 + 0.481 H^3 - 2.3 H^2 + 4.917 H - 1.791)   if H > 0.5
    beta = 1                                                             otherwise

and the logits become ``l * beta`` before the division by the temperature. beta >= 1 never
raises the entropy; H <= 0.5 is left alone ("don't overcorrect low-entropy heads"). The quartic
is the paper's fit of the inverse temperature that best sharpens a head as a function of its
entropy; it exceeds 1 only for H in about (0.85, 5.94) nats (peak 2.42 at H = 4.41) and falls
below 1 again outside that range, so very flat distributions (H >= 5.95) are left unchanged too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from backends.sampler import SamplingRow

# Highest degree first, as numpy.polyval takes them (the paper's `poly_fit`).
ADAPTIVE_POLY = (-0.037, 0.481, -2.3, 4.917, -1.791)
ADAPTIVE_MIN_ENTROPY = 0.5


def apply_logit_bias(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """logits[i, t] += bias for every (t, bias) of row i's logit_bias (ids >= vocab are ignored)."""
    vocab = logits.shape[1]
    flat, values = [], []
    for i, row in enumerate(rows):
        for token, bias in row.params.logit_bias:
            if token < vocab:
                flat.append(i * vocab + token)
                values.append(bias)
    if flat:
        index = torch.tensor(flat, device=logits.device)
        logits.view(-1).index_add_(0, index, torch.tensor(values, dtype=logits.dtype, device=logits.device))


def apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """Repetition penalty on prompt + output tokens, then presence/frequency on output tokens."""
    rep = [i for i, r in enumerate(rows) if r.params.repetition_penalty != 1.0]
    if rep:
        index, _ = _unique_positions(logits, rep, (list(rows[i].prompt_token_ids)
                                                    + list(rows[i].output_token_ids) for i in rep))
        penalty = _per_row(logits, [r.params.repetition_penalty for r in rows])[index // logits.shape[1]]
        flat = logits.view(-1)
        seen = flat[index]
        flat[index] = torch.where(seen > 0, seen / penalty, seen * penalty)
    pf = [i for i, r in enumerate(rows)
          if r.params.presence_penalty != 0.0 or r.params.frequency_penalty != 0.0]
    if pf:
        index, counts = _unique_positions(logits, pf, (rows[i].output_token_ids for i in pf))
        row_of = index // logits.shape[1]
        presence = _per_row(logits, [r.params.presence_penalty for r in rows])[row_of]
        frequency = _per_row(logits, [r.params.frequency_penalty for r in rows])[row_of]
        logits.view(-1).index_add_(0, index, -(frequency * counts.to(logits.dtype) + presence))


def mask_stop_tokens(logits: torch.Tensor, rows: Sequence[SamplingRow],
                     eos_token_ids: Iterable[int]) -> None:
    """Set EOS (unless ignore_eos) and stop_token_ids to -inf for rows still short of min_tokens."""
    vocab = logits.shape[1]
    eos = tuple(eos_token_ids)
    flat = []
    for i, row in enumerate(rows):
        p = row.params
        if len(row.output_token_ids) >= p.min_tokens:
            continue
        stops = set(p.stop_token_ids) if p.ignore_eos else set(p.stop_token_ids).union(eos)
        flat.extend(i * vocab + t for t in stops if t < vocab)
    if flat:
        logits.view(-1)[torch.tensor(flat, device=logits.device)] = float("-inf")


def adaptive_beta(logits: torch.Tensor) -> torch.Tensor:
    """beta [R] >= 1 for each row of logits [R, vocab], by the rule in the module docstring."""
    logp = torch.log_softmax(logits, dim=-1)
    # -sum p ln p; clamping -inf (a masked token, p = 0) to the lowest float makes its term 0, not NaN.
    entropy = -torch.linalg.vecdot(logp.exp(), logp.clamp_(min=torch.finfo(logp.dtype).min))
    beta = torch.zeros_like(entropy)
    for c in ADAPTIVE_POLY:  # Horner's rule
        beta = beta * entropy + c
    return torch.where(entropy > ADAPTIVE_MIN_ENTROPY, beta.clamp(min=1.0), torch.ones_like(beta))


def _unique_positions(logits: torch.Tensor, row_ids: list[int],
                      token_lists: Iterable[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct flat positions row * vocab + token over the given rows, and how often each occurs."""
    vocab = logits.shape[1]
    parts = []
    for i, tokens in zip(row_ids, token_lists):
        t = torch.as_tensor(list(tokens), dtype=torch.int64)
        parts.append(t[(t >= 0) & (t < vocab)] + i * vocab)  # an id >= vocab must not spill into row i+1
    index, counts = torch.unique(torch.cat(parts), return_counts=True)
    return index.to(logits.device), counts.to(logits.device)


def _per_row(logits: torch.Tensor, values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=logits.dtype, device=logits.device)
