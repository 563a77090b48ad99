"""Batched sampling: every row of a step's logits has its own parameters.

    out = sample(logits, [SamplingRow(params, generator, prompt_ids, output_ids), ...], eos_ids)
    out.token_ids[i], out.logprobs[i]

Order (backends/sampling_params.py): logit_bias, penalties, min_tokens masking; greedy rows take
the argmax there and never sort; then adaptive temperature, temperature, top-k, top-p on what
remains, min-p.

Cost, torch path: a row with neither top-k nor top-p is never sorted: a few in-place elementwise
passes, then a two-level inverse CDF (block sums, then one block). A top-k row searches only the k
blocks with the largest maxima (_topk). A top-p-only row first takes the top TOP_P_CANDIDATES
tokens; only if their mass is short of p is the whole row sorted. Rows are processed in chunks of
like rows. Compiled kernel: each row is read from memory once and its later passes run while it
sits in L2; no row is ever sorted whole (a nucleus past the candidates is cut through a histogram,
whose crossing bins alone are sorted). Which path a row takes depends on its own parameters and
logits only, never on the rest of the batch.

Ties: top-k keeps exactly k tokens and top-p the shortest prefix of the descending order; among
tokens tied at the cut, which are kept is deterministic for a given row but unspecified.

Draws: each sampled row draws exactly one uniform u in [0, 1) per step from its own generator
(torch's global RNG when it has none) and takes the token whose cumulative-probability interval
holds u (inverse CDF). So a seeded request yields the same tokens whatever shares its batch.

Logprobs are those of the distribution the token was drawn from, i.e. log_softmax of the processed
logits (after every step above; for greedy rows, after bias, penalties and masking).

Float32 logits on the CPU go, after bias, penalties and masking, to the compiled row sampler
(backends/sampling_kernel.cpp) when it builds, else to the torch path below; both follow the rules
above and draw in the same order (vocabulary order for rows without top-k/top-p, descending
probability for the others), so for the same u they pick the same token except where u, p or
min_p lies within float rounding of a boundary (their exp and summation orders differ), and among
tokens tied at a cut (the kernel keeps the lowest ids first). Greedy rows agree exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from backends import sampling_kernel
from backends.logits_processors import (ADAPTIVE_MIN_ENTROPY, ADAPTIVE_POLY, adaptive_beta, apply_logit_bias,
                                        apply_penalties, mask_stop_tokens)
from backends.sampling_params import SamplingParams
from backends.token_logprobs import TokenLogprobs

# Usually enough to hold the nucleus of a language model's next-token distribution; rows whose top
# 1,024 hold less than p of the mass fall back to a full sort, so the result is exact either way.
TOP_P_CANDIDATES = 1024
# NOTE: glibc hands out fresh (page-faulting) memory for every allocation above its mmap threshold
# (at most 32 MiB), so rows are processed in chunks of at most 16 MiB, which are recycled; fewer,
# larger chunks also mean fewer parallel regions (kernel launches on a GPU). A Gemma row is 1 MiB.
CHUNK_BYTES = 16 << 20
CDF_BLOCK = 256  # tokens per block of the two-level inverse CDF
TOPK_BLOCK = 64  # tokens per block of the block-maximum top-k
# The compiled sampler lists the tokens >= the KERNEL_CANDIDATE_BLOCKS-th largest maximum of 64-token
# blocks for a top-p row (and a histogram only when their mass is short of p), and takes top-k by
# block maxima up to KERNEL_MAX_BLOCK_TOP_K (larger k: the histogram). 0 sends every such row to the
# histogram (tests).
KERNEL_CANDIDATE_BLOCKS = 256
KERNEL_MAX_BLOCK_TOP_K = 1024
USE_KERNEL = True  # False: always the torch path (tests compare the two)
_GREEDY, _FULL, _TOP_K, _TOP_P = 0, 1, 2, 3  # sampling paths; a row's path depends on its own params only


@dataclass(frozen=True)
class SamplingRow:
    """One row of a step's logits and what the sampler needs to know about its request."""

    params: SamplingParams
    generator: torch.Generator | None = None  # the request's own; None = torch's global RNG
    prompt_token_ids: Sequence[int] = ()  # read only (repetition penalty)
    output_token_ids: Sequence[int] = ()  # read only (penalties, min_tokens)


@dataclass(frozen=True)
class SamplerOutput:
    token_ids: list[int]  # one per row
    logprobs: list[TokenLogprobs | None]  # None where params.logprobs == 0


@torch.inference_mode()  # logits computed in inference mode may only be updated in place inside it
def sample(logits: torch.Tensor, rows: Sequence[SamplingRow],
           eos_token_ids: Iterable[int] = ()) -> SamplerOutput:
    """logits [B, vocab] float32 -> one token per row. logits is scratch: it is modified in place."""
    if logits.dim() != 2 or logits.shape[0] != len(rows):
        raise ValueError(f"logits must be [len(rows)={len(rows)}, vocab], got {tuple(logits.shape)}")
    logits = logits.contiguous()
    apply_logit_bias(logits, rows)
    apply_penalties(logits, rows)
    mask_stop_tokens(logits, rows, eos_token_ids)
    token_ids = [0] * len(rows)
    logprobs: list[TokenLogprobs | None] = [None] * len(rows)
    vocab = logits.shape[1]
    u = _uniforms(rows, logits.device)
    if USE_KERNEL and logits.device.type == "cpu" and logits.dtype == torch.float32 and sampling_kernel.available():
        return _sample_kernel(logits, rows, u)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, row in enumerate(rows):
        p = row.params
        key = ((_GREEDY, 0) if p.greedy else (_TOP_K, p.top_k) if 0 < p.top_k < vocab
               else (_TOP_P, 0) if p.top_p < 1.0 else (_FULL, 0))
        groups.setdefault(key, []).append(i)
    per_chunk = max(1, CHUNK_BYTES // (vocab * logits.element_size()))
    for (kind, k), members in groups.items():
        for c in range(0, len(members), per_chunk):
            chunk = members[c:c + per_chunk]
            tokens, lps = _sample_chunk(kind, k, _take_rows(logits, chunk), [rows[i].params for i in chunk],
                                        u[torch.tensor(chunk, device=u.device)])
            for i, t, lp in zip(chunk, tokens, lps):
                token_ids[i], logprobs[i] = t, lp
    return SamplerOutput(token_ids, logprobs)


def _sample_kernel(logits: torch.Tensor, rows: Sequence[SamplingRow], u: torch.Tensor) -> SamplerOutput:
    """Every row at once through the compiled sampler (one parallel pass over the rows)."""
    params = [r.params for r in rows]
    fparams = torch.tensor([(0.0 if p.greedy else 1.0 / p.temperature, p.top_p, p.min_p, 0.0) for p in params],
                           dtype=torch.float64)
    fparams[:, 3] = u
    iparams = torch.tensor([(int(p.greedy) | int(p.adaptive_temperature) << 1, p.top_k, p.logprobs)
                            for p in params], dtype=torch.int64)
    token_ids, lps, top_ids, top_lps = sampling_kernel.sample_rows(
        logits, fparams, iparams, ADAPTIVE_POLY, ADAPTIVE_MIN_ENTROPY, KERNEL_CANDIDATE_BLOCKS,
        KERNEL_MAX_BLOCK_TOP_K)
    logprobs: list[TokenLogprobs | None] = [None] * len(rows)
    asked = [i for i, p in enumerate(params) if p.logprobs]
    if asked:
        index = torch.tensor(asked)
        for i, lp, ids, values in zip(asked, lps[index].tolist(), top_ids[index].tolist(), top_lps[index].tolist()):
            n = params[i].logprobs
            logprobs[i] = TokenLogprobs(lp, tuple((t, v) for t, v in zip(ids[:n], values[:n]) if t >= 0))
    return SamplerOutput(token_ids.tolist(), logprobs)


def _sample_chunk(kind: int, top_k: int, x: torch.Tensor, params: list[SamplingParams], u: torch.Tensor
                  ) -> tuple[list[int], list[TokenLogprobs | None]]:
    """Rows x [R, vocab] that share a path (and, for top-k, k); x may be overwritten."""
    if kind == _GREEDY:
        best = x.argmax(dim=-1)
        lse = x.logsumexp(dim=-1, keepdim=True) if any(p.logprobs for p in params) else None
        return best.tolist(), _top_logprobs(x, best, params, lambda v: v - lse)
    scale = _scales(x, params)
    if kind == _FULL:
        return _sample_full(x, params, scale, u)
    if kind == _TOP_K:
        vals, ids = _topk(x, top_k)  # same set and order as on the scaled row (scale > 0)
        vals.mul_(scale.unsqueeze(1))
        return _sample_candidates(vals, ids, vals.logsumexp(dim=-1), params, u)
    return _sample_top_p(x.mul_(scale.unsqueeze(1)), params, u)


def _take_rows(logits: torch.Tensor, chunk: list[int]) -> torch.Tensor:
    """The chunk's rows: a view when they are consecutive (logits is scratch), else a copy."""
    if chunk == list(range(chunk[0], chunk[0] + len(chunk))):
        return logits[chunk[0]:chunk[0] + len(chunk)]
    return logits[torch.tensor(chunk, device=logits.device)]


def _scales(x: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Per row, beta / temperature (beta = 1 unless adaptive_temperature)."""
    scale = torch.tensor([1.0 / p.temperature for p in params], dtype=x.dtype, device=x.device)
    adaptive = [j for j, p in enumerate(params) if p.adaptive_temperature]
    if adaptive:
        a = torch.tensor(adaptive, device=x.device)
        scale[a] *= adaptive_beta(x[a])
    return scale


def _uniforms(rows: Sequence[SamplingRow], device: torch.device) -> torch.Tensor:
    """u [B] in [0, 1): one per sampled (non-greedy) row, from that row's generator only."""
    u = torch.zeros(len(rows), dtype=torch.float64)
    unseeded = [i for i, r in enumerate(rows) if r.generator is None and not r.params.greedy]
    if unseeded:
        u[unseeded] = torch.rand(len(unseeded), dtype=torch.float64)
    for i, row in enumerate(rows):
        g = row.generator
        if g is not None and not row.params.greedy:
            u[i] = torch.rand(1, dtype=torch.float64, generator=g, device=g.device).item()
    return u.to(device)


def _sample_full(x: torch.Tensor, params: list[SamplingParams], scale: torch.Tensor, u: torch.Tensor
                 ) -> tuple[list[int], list[TokenLogprobs | None]]:
    """Rows without top-k/top-p: inverse CDF over the whole (min-p masked) row, no sort."""
    top = x.amax(dim=-1, keepdim=True)
    w = x.sub_(top).mul_(scale.unsqueeze(1)).exp_()  # p / p_max, in place
    if any(p.min_p > 0.0 for p in params):
        min_p = torch.tensor([p.min_p for p in params], dtype=w.dtype, device=w.device).unsqueeze(1)
        w.masked_fill_(w < min_p, 0.0)  # rows without min-p compare with 0: nothing is dropped
    pos, total = _invert_cdf_blocked(w, u)
    lps = _top_logprobs(w, torch.tensor(pos, device=w.device), params,
                        lambda v: (v / total.unsqueeze(1)).log())
    return pos, lps


def _sample_top_p(x: torch.Tensor, params: list[SamplingParams], u: torch.Tensor
                  ) -> tuple[list[int], list[TokenLogprobs | None]]:
    """Rows with top-p and no top-k (x already scaled): the top candidates, else a full sort."""
    vocab = x.shape[1]
    log_z = x.logsumexp(dim=-1)
    vals, ids = _topk(x, min(TOP_P_CANDIDATES, vocab))
    top_p = torch.tensor([p.top_p for p in params], device=x.device)
    mass = (vals - log_z.unsqueeze(1)).exp().cumsum(dim=-1)[:, -1]
    short = (mass < top_p).nonzero().flatten().tolist() if vals.shape[1] < vocab else []
    if not short:
        return _sample_candidates(vals, ids, log_z, params, u)
    # The nucleus of these rows reaches past the candidates: sort their whole rows instead.
    rest = sorted(set(range(len(params))) - set(short))
    tokens: list[int] = [0] * len(params)
    lps: list[TokenLogprobs | None] = [None] * len(params)
    for part, (v, i) in ((short, x[short].sort(dim=-1, descending=True)), (rest, (vals[rest], ids[rest]))):
        if part:
            t, lp = _sample_candidates(v, i, log_z[part], [params[j] for j in part], u[part])
            for j, tj, lpj in zip(part, t, lp):
                tokens[j], lps[j] = tj, lpj
    return tokens, lps


def _sample_candidates(vals: torch.Tensor, ids: torch.Tensor, log_z: torch.Tensor,
                       params: list[SamplingParams], u: torch.Tensor
                       ) -> tuple[list[int], list[TokenLogprobs | None]]:
    """vals/ids [R, K] sorted descending (scaled); log_z [R] normalises vals for top-p."""
    top_p = torch.tensor([p.top_p for p in params], device=vals.device).unsqueeze(1)
    min_p = torch.tensor([p.min_p for p in params], device=vals.device).unsqueeze(1)
    probs = (vals - log_z.unsqueeze(1)).exp()
    keep = (probs.cumsum(dim=-1) - probs) < top_p  # the smallest prefix whose mass reaches p
    keep[:, 0] = True
    keep &= (vals - vals[:, :1]).exp() >= min_p  # p >= min_p * p_max, as in _sample_full
    masked = vals.masked_fill(~keep, float("-inf"))
    cdf = (masked - vals[:, :1]).exp().cumsum(dim=-1)
    pos = _search(cdf, u.to(cdf.dtype) * cdf[:, -1])
    tokens = ids.gather(1, pos.unsqueeze(1)).squeeze(1).tolist()
    lse = masked.logsumexp(dim=-1, keepdim=True) if any(p.logprobs for p in params) else None
    return tokens, _top_logprobs(masked, pos, params, lambda v: v - lse, ids)


def _topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x.topk(k) (values sorted descending, ids) without a selection pass over every token.

    The k largest values lie in the k blocks of TOPK_BLOCK tokens with the largest maxima (a value
    outside them would make k + 1 values larger than the k-th), so only those k * TOPK_BLOCK
    tokens are searched. The values are exactly torch.topk's; among equal values the ids may differ.
    """
    rows, vocab = x.shape
    if vocab % TOPK_BLOCK or 4 * k * TOPK_BLOCK > vocab:
        return x.topk(k, dim=-1)
    blocks = x.view(rows, -1, TOPK_BLOCK).amax(dim=-1).topk(k, dim=-1).indices
    index = (blocks.unsqueeze(2) * TOPK_BLOCK + torch.arange(TOPK_BLOCK, device=x.device)).flatten(1)
    vals, pos = x.gather(1, index).topk(k, dim=-1)
    return vals, index.gather(1, pos)


def _invert_cdf_blocked(w: torch.Tensor, u: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """Inverse CDF over weights w [R, V] >= 0 without a [R, V] cumsum: pick a block of CDF_BLOCK
    tokens by the block sums, then the token inside it. Returns positions and the row totals."""
    rows, vocab = w.shape
    whole = vocab // CDF_BLOCK * CDF_BLOCK
    sums = [w[:, :whole].reshape(rows, -1, CDF_BLOCK).sum(dim=-1)] if whole else []
    if whole < vocab:
        sums.append(w[:, whole:].sum(dim=-1, keepdim=True))
    block_cdf = torch.cat(sums, dim=1).cumsum(dim=-1)
    total = block_cdf[:, -1]
    target = u.to(w.dtype) * total
    block = _search(block_cdf, target)
    before = block_cdf.gather(1, (block - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    target = target - torch.where(block > 0, before, torch.zeros_like(before))
    index = block.unsqueeze(1) * CDF_BLOCK + torch.arange(CDF_BLOCK, device=w.device)
    inner = w.gather(1, index.clamp(max=vocab - 1)).masked_fill_(index >= vocab, 0.0)
    pos = block * CDF_BLOCK + _search(inner.cumsum(dim=-1), target)
    return pos.tolist(), total


def _search(cdf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, the first position whose cdf exceeds target (so never a zero weight); a target
    that rounding pushed up to the total takes the first position reaching the total."""
    pos = torch.searchsorted(cdf, target.unsqueeze(1).contiguous(), right=True)
    last = torch.searchsorted(cdf, cdf[:, -1:].contiguous(), right=False)
    return torch.minimum(pos, last).squeeze(1)


def _top_logprobs(scores: torch.Tensor, chosen: torch.Tensor, params: list[SamplingParams],
                  to_logprob: Callable[[torch.Tensor], torch.Tensor],
                  ids: torch.Tensor | None = None) -> list[TokenLogprobs | None]:
    """Logprobs of the chosen positions [R] and of the top params.logprobs alternatives, for the rows
    that asked. scores [R, V] rank positions as their logprobs do; to_logprob maps [R, n] scores to
    logprobs; ids [R, V] maps positions to token ids (None: positions are token ids)."""
    n = max(p.logprobs for p in params)
    if n == 0:
        return [None] * len(params)
    top_scores, top_pos = scores.topk(min(n, scores.shape[1]), dim=-1)
    top_ids = (top_pos if ids is None else ids.gather(1, top_pos)).tolist()
    top_lps = to_logprob(top_scores).tolist()
    chosen_lps = to_logprob(scores.gather(1, chosen.unsqueeze(1))).squeeze(1).tolist()
    out: list[TokenLogprobs | None] = []
    for p, lp, row_ids, row_lps in zip(params, chosen_lps, top_ids, top_lps):
        top = tuple((t, v) for t, v in zip(row_ids[:p.logprobs], row_lps) if v != float("-inf"))
        out.append(TokenLogprobs(lp, top) if p.logprobs else None)
    return out
