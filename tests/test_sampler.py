"""The batched sampler: exact target distributions, exact logit adjustments, logprobs, seeds.

Distribution checks draw 20,000 tokens from fixed logits and compare the counts with the exact
target distribution (computed independently below from the definitions) by a chi-square test at
p > 0.001; tokens outside the target's support must never be drawn. Tests taking the `path`
fixture run on the torch path, on the compiled kernel, and on the kernel with every top-k/top-p
row sent to its histogram (tests/test_sampling_kernel.py compares the paths token for token).
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from backends import sampler, sampling_kernel
from backends.logits_processors import ADAPTIVE_POLY, adaptive_beta, apply_logit_bias, apply_penalties, mask_stop_tokens
from backends.sampler import SamplingRow, sample
from backends.sampling_params import SamplingParams as P

NUM_DRAWS = 20_000
LOGITS = [3.0, 2.2, 1.9, 1.0, 0.5, 0.0, -0.7, -1.5]


@pytest.fixture(params=["torch", "kernel", "kernel-histogram"])
def path(request, monkeypatch) -> str:
    """Which sampling path the test runs on (the kernel ones skip where it does not build)."""
    if request.param == "torch":
        monkeypatch.setattr(sampler, "USE_KERNEL", False)
    elif not sampling_kernel.available():
        pytest.skip(f"compiled sampler unavailable: {sampling_kernel.build_error()}")
    if request.param == "kernel-histogram":
        monkeypatch.setattr(sampler, "KERNEL_CANDIDATE_BLOCKS", 0)
        monkeypatch.setattr(sampler, "KERNEL_MAX_BLOCK_TOP_K", 0)
    return request.param


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for X ~ chi-square(df), from the closed forms for integer df (no scipy):
    even df: exp(-x/2) sum_{i < df/2} (x/2)^i / i!;
    odd df: erfc(sqrt(x/2)) + sqrt(2x/pi) exp(-x/2) sum_{i < (df-1)/2} x^i / (3 * 5 * ... * (2i+1))."""
    if df % 2 == 0:
        term = total = 1.0
        for i in range(1, df // 2):
            term *= x / 2 / i
            total += term
        return math.exp(-x / 2) * total
    total, term = math.erfc(math.sqrt(x / 2)), math.sqrt(2 * x / math.pi) * math.exp(-x / 2)
    for i in range(1, (df - 1) // 2 + 1):
        total += term
        term *= x / (2 * i + 1)
    return total


def target(logits: list[float], temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> dict[int, float]:
    """The exact distribution, straight from the definitions in backends/sampling_params.py."""
    z = [v / temperature for v in logits]
    order = sorted(range(len(z)), key=lambda i: -z[i])[:top_k or len(z)]
    w = {i: math.exp(z[i] - z[order[0]]) for i in order}  # p / p_max
    kept, mass = [], 0.0
    for i in order:  # top-p over what top-k kept: the smallest prefix reaching p
        if mass >= top_p:
            break
        kept.append(i)
        mass += w[i] / sum(w.values())
    kept = [i for i in kept if w[i] >= min_p]
    return {i: w[i] / sum(w[j] for j in kept) for i in kept}


def draw(logits: list[float], params: P, seed: int = 1234) -> Counter:
    g = torch.Generator().manual_seed(seed)
    rows = [SamplingRow(params, g)] * NUM_DRAWS
    return Counter(sample(torch.tensor([logits] * NUM_DRAWS), rows).token_ids)


def assert_matches(counts: Counter, expected: dict[int, float]) -> None:
    assert set(counts) <= set(expected), f"drew tokens outside the support: {set(counts) - set(expected)}"
    if len(expected) == 1:
        return
    assert min(expected.values()) * NUM_DRAWS >= 5  # the chi-square approximation needs it
    stat = sum((counts[i] - NUM_DRAWS * p) ** 2 / (NUM_DRAWS * p) for i, p in expected.items())
    assert chi2_sf(stat, len(expected) - 1) > 0.001, (stat, counts, expected)


def test_chi2_sf_matches_the_tabulated_0_001_critical_values() -> None:
    # Critical values at p = 0.001 from standard tables (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.4).
    for df, critical in [(1, 10.828), (2, 13.816), (3, 16.266), (4, 18.467), (5, 20.515), (7, 24.322)]:
        assert chi2_sf(critical, df) == pytest.approx(0.001, rel=1e-3)


CASES = [
    dict(),
    dict(temperature=0.8),
    dict(temperature=2.0),
    dict(top_k=3),
    dict(top_p=0.8),
    dict(min_p=0.1),
    dict(top_k=5, top_p=0.7),
    dict(temperature=0.7, top_k=4, top_p=0.9, min_p=0.25),
    dict(temperature=1.5, top_p=0.9, min_p=0.2),
]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "plain")
def test_draws_match_the_exact_target_distribution(path, kwargs) -> None:
    assert_matches(draw(LOGITS, P(**kwargs)), target(LOGITS, **kwargs))


@pytest.mark.parametrize("kwargs", [dict(top_k=3), dict(top_p=0.8), dict(top_k=5, top_p=0.7),
                                    dict(temperature=1.5, top_p=0.9, min_p=0.2)])
def test_block_top_k_and_full_sort_fallback_paths_match_too(monkeypatch, path, kwargs) -> None:
    # 64 tokens, the 8 live ones scattered over blocks; blocks of 2 make top-k take the block path
    # and 2 top-p candidates make every top-p row fall back to a full sort.
    monkeypatch.setattr(sampler, "TOPK_BLOCK", 2)
    monkeypatch.setattr(sampler, "TOP_P_CANDIDATES", 2)
    where = [5, 17, 30, 31, 40, 50, 62, 63]
    logits = [-30.0] * 64
    for i, v in zip(where, LOGITS):
        logits[i] = v
    expected = {where[i]: p for i, p in target(LOGITS, **kwargs).items()}
    assert_matches(draw(logits, P(**kwargs)), expected)


def test_block_top_k_returns_torch_topk_values() -> None:
    x = torch.randn(3, 64 * 512, generator=torch.Generator().manual_seed(0)).round(decimals=1)  # ties
    for k in (1, 7, 50):
        vals, ids = sampler._topk(x, k)
        assert torch.equal(vals, x.topk(k).values)
        assert torch.equal(x.gather(1, ids), vals)


def test_top_p_after_top_k_keeps_exactly_the_expected_set(path) -> None:
    # After top-k=4 the renormalised masses are .5424 .7862 .9668 1: top-p=.9 keeps 3 of them;
    # logprobs list every kept token (and only those: dropped ones have logprob -inf).
    out = sample(torch.tensor([LOGITS]), [SamplingRow(P(top_k=4, top_p=0.9, logprobs=20))])
    assert [t for t, _ in out.logprobs[0].top] == [0, 1, 2]
    assert set(target(LOGITS, top_k=4, top_p=0.9)) == {0, 1, 2}
    assert set(draw(LOGITS, P(top_k=4, top_p=0.9))) == {0, 1, 2}


def rows_of(*params: P, prompt=(), output=()) -> list[SamplingRow]:
    return [SamplingRow(p, None, list(prompt), list(output)) for p in params]


def test_penalties_change_logits_exactly_as_defined() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0, 0.0]] * 2)
    params = P(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    rows = [SamplingRow(params, None, [0, 1, 5], [1, 3, 3]), SamplingRow(P(), None, [0], [3])]
    apply_penalties(logits, rows)
    # repetition on {0, 1, 3, 5}: 2/2, -1*2, 3/2, 0 stays 0; then output counts {1: 1, 3: 2}:
    # token 1: -2 - .25*1 - .5; token 3: 1.5 - .25*2 - .5. Row 1 has no penalties.
    assert logits.tolist() == [[1.0, -2.75, 0.5, 0.5, -2.0, 0.0], [2.0, -1.0, 0.5, 3.0, -2.0, 0.0]]


def test_presence_and_frequency_ignore_prompt_tokens() -> None:
    logits = torch.zeros(1, 4)
    apply_penalties(logits, rows_of(P(presence_penalty=1.0, frequency_penalty=1.0), prompt=[0, 0, 1], output=[2]))
    assert logits.tolist() == [[0.0, 0.0, -2.0, 0.0]]


def test_logit_bias_adds_exactly_and_ignores_ids_past_the_vocabulary() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    apply_logit_bias(logits, rows_of(P(logit_bias={0: 5.5, 3: -100.0, 9: 1.0}), P()))
    assert logits.tolist() == [[6.5, 2.0, 3.0, -96.0], [1.0, 2.0, 3.0, 4.0]]
    out = sample(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), rows_of(P(temperature=0, logit_bias={1: 2.5})))
    assert out.token_ids == [1]


def test_min_tokens_masks_eos_and_stop_ids_until_reached() -> None:
    eos = {3}
    rows = [SamplingRow(P(min_tokens=3, stop_token_ids=(1,)), None, [], [7, 7]),  # short: masked
            SamplingRow(P(min_tokens=2, stop_token_ids=(1,)), None, [], [7, 7]),  # reached
            SamplingRow(P(min_tokens=3, stop_token_ids=(1,), ignore_eos=True), None, [], [])]
    logits = torch.zeros(3, 4)
    mask_stop_tokens(logits, rows, eos)
    inf = float("-inf")
    assert logits.tolist() == [[0, inf, 0, inf], [0, 0, 0, 0], [0, inf, 0, 0]]
    greedy = [SamplingRow(P(temperature=0, min_tokens=1), None, [], [])]
    assert sample(torch.tensor([[0.0, 1.0, 0.0, 5.0]]), greedy, eos).token_ids == [1]


def test_adaptive_beta_follows_the_papers_polynomial() -> None:
    def poly(h: float) -> float:
        return sum(c * h ** (len(ADAPTIVE_POLY) - 1 - i) for i, c in enumerate(ADAPTIVE_POLY))

    uniform8 = torch.zeros(1, 8)  # H = ln 8 = 2.08: beta = poly(ln 8) = 2.12
    one_hot = torch.tensor([[0.0] + [float("-inf")] * 7])  # H = 0: left alone
    flat = torch.zeros(1, 2000)  # H = ln 2000 = 7.6: the polynomial is < 1 there, so beta = 1
    beta = adaptive_beta(torch.cat([uniform8, one_hot, torch.full((1, 8), -50.0)]))
    assert beta.tolist() == pytest.approx([poly(math.log(8)), 1.0, poly(math.log(8))], rel=1e-5)
    assert adaptive_beta(flat).item() == 1.0
    peaked = torch.tensor([[10.0, 0.0, 0.0]])  # H ~ 0.001 <= 0.5
    assert adaptive_beta(peaked).item() == 1.0


def expected_logprobs(processed: torch.Tensor, token: int, n: int) -> tuple[float, list[tuple[int, float]]]:
    lp = torch.log_softmax(processed, dim=-1)
    values, ids = lp.topk(n)
    return lp[token].item(), [(i, v) for i, v in zip(ids.tolist(), values.tolist()) if v != float("-inf")]


@pytest.mark.parametrize("kwargs, processed", [
    (dict(temperature=0), torch.tensor(LOGITS)),
    (dict(temperature=0.7), torch.tensor(LOGITS) / 0.7),
    (dict(min_p=0.1), torch.tensor(LOGITS[:4] + [float("-inf")] * 4)),
    (dict(top_k=3, temperature=2.0), torch.tensor([v / 2 for v in LOGITS[:3]] + [float("-inf")] * 5)),
    (dict(top_p=0.8), torch.tensor(LOGITS[:3] + [float("-inf")] * 5)),
    (dict(adaptive_temperature=True, temperature=0.5),
     torch.tensor(LOGITS) * adaptive_beta(torch.tensor([LOGITS])).item() / 0.5),
])
def test_logprobs_are_log_softmax_of_the_processed_logits(path, kwargs, processed) -> None:
    for seed in range(5):
        row = SamplingRow(P(logprobs=5, **kwargs), torch.Generator().manual_seed(seed))
        out = sample(torch.tensor([LOGITS]), [row])
        token = out.token_ids[0]
        logprob, top = expected_logprobs(processed, token, 5)
        assert out.logprobs[0].logprob == pytest.approx(logprob, abs=1e-5)
        assert [t for t, _ in out.logprobs[0].top] == [t for t, _ in top]
        assert [v for _, v in out.logprobs[0].top] == pytest.approx([v for _, v in top], abs=1e-5)


def test_rows_without_logprobs_get_none(path) -> None:
    out = sample(torch.tensor([LOGITS, LOGITS]), rows_of(P(), P(temperature=0)))
    assert out.logprobs == [None, None]


def test_greedy_and_untruncated_rows_never_sort(monkeypatch, path) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("sorted")

    for name in ("sort", "topk", "argsort"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
        monkeypatch.setattr(torch, name, forbidden)
    logits = torch.randn(4, 4096, generator=torch.Generator().manual_seed(0))
    out = sample(logits, rows_of(P(temperature=0), P(temperature=0.8), P(min_p=0.05),
                                 P(adaptive_temperature=True, repetition_penalty=1.2), output=[3, 4]))
    assert len(out.token_ids) == 4


SEEDED = [P(seed=1), P(seed=2, temperature=0.6, top_k=10), P(seed=3, top_p=0.5), P(seed=4, top_p=0.95),
          P(seed=5, min_p=0.05, temperature=1.3), P(seed=6, top_k=200, top_p=0.9, min_p=0.01),
          P(seed=7, adaptive_temperature=True, repetition_penalty=1.3, presence_penalty=0.4),
          P(seed=8, temperature=1.5, top_p=0.99)]  # flat enough that its nucleus needs a full sort
OTHERS = [P(temperature=0), P(top_k=5), P(top_p=0.7, frequency_penalty=1.0), P(min_p=0.2),
          P(seed=99, temperature=2.0), P(adaptive_temperature=True)]
VOCAB = 4096


def generate(params: P, position: int, others: list[P], steps: int = 6) -> list[int]:
    """Tokens of one seeded request over several steps, sharing each step with `others`."""
    gen = torch.Generator().manual_seed(params.seed)
    other_gens = [torch.Generator().manual_seed(o.seed) if o.seed is not None else None for o in others]
    row_logits = torch.Generator().manual_seed(1000 + params.seed)  # the request's own logits stream
    other_logits = torch.Generator().manual_seed(len(others))
    output: list[int] = []
    for _ in range(steps):
        mine = torch.randn(1, VOCAB, generator=row_logits) * 3
        rows = [SamplingRow(o, g, [1, 2, 3], [4]) for o, g in zip(others, other_gens)]
        rows.insert(position, SamplingRow(params, gen, [1, 2, 3], list(output)))
        logits = torch.randn(len(rows), VOCAB, generator=other_logits) * 3
        logits[position] = mine[0]
        output.append(sample(logits, rows, eos_token_ids=(0,)).token_ids[position])
    return output


@pytest.mark.parametrize("params", SEEDED, ids=lambda p: f"seed={p.seed}")
def test_seeded_rows_give_the_same_tokens_alone_or_in_any_batch(monkeypatch, path, params) -> None:
    alone = generate(params, 0, [])
    assert len(set(alone)) > 1  # really sampling
    assert generate(params, 0, []) == alone  # whenever it runs
    assert generate(params, 3, OTHERS) == alone
    assert generate(params, 6, OTHERS[::-1]) == alone
    monkeypatch.setattr(sampler, "CHUNK_BYTES", 2 * VOCAB * 4)  # other neighbours in each chunk
    assert generate(params, 1, OTHERS * 2) == alone


def test_rejects_logits_that_do_not_match_the_rows(path) -> None:
    with pytest.raises(ValueError, match="logits"):
        sample(torch.zeros(2, 4), rows_of(P()))
