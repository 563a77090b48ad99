"""The compiled row sampler (backends/sampling_kernel.cpp) against the torch path, token for token.

Both paths follow the sampler's rules but round differently (their exp, their summation orders),
so they may part only where u, p or min_p lies within float rounding of a boundary. The reference
below applies the rules in float64 and names the token only where every boundary is further than
rounding reaches (MARGIN: the torch path normalises by a float32 logsumexp of magnitude ~10, whose
ulp shifts every probability by up to ~1e-6); on those rows the kernel, its histogram fallback and the
torch path must all pick the reference's token. Most rows qualify, and the test checks that they do.
"""

from __future__ import annotations

import math

import pytest
import torch

from backends import sampler, sampling_kernel
from backends.logits_processors import ADAPTIVE_MIN_ENTROPY, ADAPTIVE_POLY
from backends.sampler import SamplingRow, sample
from backends.sampling_params import SamplingParams as P

pytestmark = pytest.mark.skipif(not sampling_kernel.available(),
                                reason=f"compiled sampler unavailable: {sampling_kernel.build_error()}")

MARGIN = 4e-6  # of the normalised mass (top-p, the draw) or relative (min-p)
VOCAB = 32768
PARAMS = [P(), P(temperature=0.7), P(min_p=0.05), P(top_k=40), P(top_k=40, top_p=0.8, temperature=0.9),
          P(top_p=0.9), P(top_p=0.5, min_p=0.1), P(adaptive_temperature=True, temperature=0.8),
          P(top_k=3000, temperature=1.2), P(top_p=0.95, temperature=1.5), P(temperature=0),
          P(top_k=500, top_p=0.97, min_p=0.001, logprobs=3), P(top_p=0.99, logprobs=5), P(min_p=0.2, logprobs=2)]


def make_logits(num_rows: int, seed: int) -> torch.Tensor:
    """Even rows look like a language model's (48 likely tokens over low noise), odd rows are flat
    N(0, 1) noise, whose top-p nuclei hold most of the vocabulary (the kernel's histogram path)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, VOCAB, generator=g)
    head = torch.randint(VOCAB, (num_rows, 48), generator=g)
    values = 12.0 - 0.2 * torch.arange(48.0) + torch.rand(num_rows, 48, generator=g)
    logits[::2].scatter_(1, head[::2], values[::2])
    return logits


def beta(x: torch.Tensor) -> float:
    p = torch.softmax(x, dim=0)
    h = -(p * torch.log_softmax(x, dim=0)).nan_to_num().sum().item()
    b = 0.0
    for c in ADAPTIVE_POLY:
        b = b * h + c
    return max(b, 1.0) if h > ADAPTIVE_MIN_ENTROPY else 1.0


def reference(row: torch.Tensor, p: P, u: float) -> int | None:
    """The token by the sampler's rules in float64, or None when a boundary is within MARGIN."""
    x = row.double()
    if p.greedy:
        return int(x.argmax())
    z = x * ((beta(x) if p.adaptive_temperature else 1.0) / p.temperature)
    truncated = 0 < p.top_k < len(x) or p.top_p < 1.0
    order = torch.argsort(-x, stable=True) if truncated else torch.arange(len(x))  # ties: lower id first
    w = (z[order] - z.max()).exp()
    keep = torch.ones(len(x), dtype=torch.bool)
    if 0 < p.top_k < len(x):
        keep[p.top_k:] = False
    if p.top_p < 1.0:
        before = (w.cumsum(0) - w) / w[keep].sum()
        if (before[keep] - p.top_p).abs().min() < MARGIN:
            return None
        keep &= before < p.top_p
        keep[0] = True
    if p.min_p > 0.0:
        if ((w[keep] - p.min_p).abs() / p.min_p).min() < MARGIN:
            return None
        keep &= w >= p.min_p
    cdf = torch.where(keep, w, 0.0).cumsum(0)
    t = u * cdf[-1]
    if ((cdf - t).abs() / cdf[-1]).min() < MARGIN / 4:  # no logsumexp on this side
        return None
    return int(order[int((cdf > t).nonzero()[0])])


def run(logits: torch.Tensor, params: list[P], seeds: list[int]) -> list[int]:
    rows = [SamplingRow(p, torch.Generator().manual_seed(s)) for p, s in zip(params, seeds)]
    return sample(logits.clone(), rows).token_ids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernel_histogram_and_torch_paths_pick_the_reference_token(monkeypatch, seed) -> None:
    num_rows = 2 * len(PARAMS)
    logits = make_logits(num_rows, seed)
    params = [PARAMS[i // 2] for i in range(num_rows)]  # each parameter set on an LM-like and a flat row
    seeds = [1000 * seed + i for i in range(num_rows)]
    u = [torch.rand(1, dtype=torch.float64, generator=torch.Generator().manual_seed(s)).item() for s in seeds]
    expected = [reference(logits[i], params[i], u[i]) for i in range(num_rows)]
    assert sum(e is not None for e in expected) >= 0.8 * num_rows  # the comparison covers most rows
    kernel = run(logits, params, seeds)
    monkeypatch.setattr(sampler, "KERNEL_CANDIDATE_BLOCKS", 0)
    monkeypatch.setattr(sampler, "KERNEL_MAX_BLOCK_TOP_K", 0)
    histogram = run(logits, params, seeds)
    monkeypatch.setattr(sampler, "USE_KERNEL", False)
    torch_path = run(logits, params, seeds)
    for i, e in enumerate(expected):
        if e is not None:
            assert (kernel[i], histogram[i], torch_path[i]) == (e, e, e), (i, params[i])


def test_kernel_logprobs_match_the_torch_path(monkeypatch) -> None:
    logits = make_logits(2 * len(PARAMS), 7)
    params = [P(logprobs=4, **{k: getattr(p, k) for k in ("temperature", "top_k", "top_p", "min_p",
                                                           "adaptive_temperature")}) for p in PARAMS for _ in (0, 1)]
    rows = [SamplingRow(p, torch.Generator().manual_seed(i)) for i, p in enumerate(params)]
    kernel = sample(logits.clone(), rows)
    monkeypatch.setattr(sampler, "USE_KERNEL", False)
    rows = [SamplingRow(p, torch.Generator().manual_seed(i)) for i, p in enumerate(params)]
    torch_path = sample(logits.clone(), rows)
    for k, t in zip(kernel.logprobs, torch_path.logprobs):
        assert [i for i, _ in k.top] == [i for i, _ in t.top]
        assert [v for _, v in k.top] == pytest.approx([v for _, v in t.top], abs=1e-4)
    same = [i for i, (a, b) in enumerate(zip(kernel.token_ids, torch_path.token_ids)) if a == b]
    assert len(same) >= 0.9 * len(params)
    for i in same:
        assert kernel.logprobs[i].logprob == pytest.approx(torch_path.logprobs[i].logprob, abs=1e-4)


@pytest.mark.parametrize("candidate_blocks", [256, 0])
def test_ties_at_a_cut_keep_the_lowest_ids(monkeypatch, candidate_blocks) -> None:
    monkeypatch.setattr(sampler, "KERNEL_CANDIDATE_BLOCKS", candidate_blocks)
    monkeypatch.setattr(sampler, "KERNEL_MAX_BLOCK_TOP_K", candidate_blocks)
    flat = torch.zeros(1, 300)  # 300 equal logits over several 64-token blocks
    for p, kept in [(P(top_k=5, logprobs=20), [0, 1, 2, 3, 4]), (P(top_p=0.01, logprobs=20), [0, 1, 2]),
                    (P(top_k=10, top_p=0.5, logprobs=20), [0, 1, 2, 3, 4])]:
        out = sample(flat.clone(), [SamplingRow(p)])
        assert [t for t, _ in out.logprobs[0].top] == kept
        assert [v for _, v in out.logprobs[0].top] == pytest.approx([-math.log(len(kept))] * len(kept))
        drawn = set(sample(flat.repeat(2000, 1), [SamplingRow(p)] * 2000).token_ids)
        assert drawn == set(kept)


def test_greedy_takes_the_first_of_tied_maxima() -> None:
    logits = torch.tensor([[1.0, 5.0, 2.0, 5.0] + [0.0] * 200])
    out = sample(logits, [SamplingRow(P(temperature=0, logprobs=2))])
    assert out.token_ids == [1]
    assert [t for t, _ in out.logprobs[0].top] == [1, 3]


def test_kernel_handles_a_vocabulary_that_is_not_a_multiple_of_its_blocks(monkeypatch) -> None:
    # 1,000 tokens: the last 64-token block and the last 256-token CDF block are short; the most
    # likely token sits in the short tail so each path must read it.
    logits = torch.full((4, 1000), -5.0)
    logits[:, 997] = 5.0
    logits[:, 3] = 4.0
    rows = [SamplingRow(p) for p in (P(temperature=0), P(top_k=1), P(top_p=0.5), P(min_p=0.9))]
    assert sample(logits.clone(), rows).token_ids == [997, 997, 997, 997]
    monkeypatch.setattr(sampler, "KERNEL_CANDIDATE_BLOCKS", 0)
    monkeypatch.setattr(sampler, "KERNEL_MAX_BLOCK_TOP_K", 0)
    assert sample(logits.clone(), rows).token_ids == [997, 997, 997, 997]
