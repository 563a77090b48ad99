"""Fidelity of the full-precision engine (float32) against HF transformers on the same GGUF.

Teacher-forced on a fixed 512-token English text: logits within 1e-3 of the logit range,
perplexity within 0.1%; greedy 32-token continuations of five prompts identical.

The default tests compare with tests/fixtures/hf_reference.json (written by
tests/fixtures/make_hf_fixture.py from transformers): HF's top-16 logits, logit range and
next-token log-probability at every position. The `reference` tests (`make reference`) load
transformers itself and compare every logit of the vocabulary.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from backends.engine_config import EngineConfig
from backends.loader import load_engine
from backends.sampling_params import SamplingParams

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = json.load(open(os.path.join(HERE, "fixtures", "hf_reference.json")))
MODELS = ("smollm2-135m", "gemma3-270m")
GREEDY = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    name = request.param
    engine = load_engine(EngineConfig(name=name, model=f"bundled:{name}", max_model_len=1024),
                         kv_cache_bytes=256 << 20)
    return name, engine, FIXTURE["models"][name]


def _perplexity(next_logprob: list[float] | torch.Tensor) -> float:
    return math.exp(-float(torch.as_tensor(next_logprob, dtype=torch.float64).mean()))


def test_tokens_of_the_text_are_the_fixture_tokens(model):
    name, engine, ref = model
    text = open(os.path.join(HERE, "fixtures", "fidelity_text.txt")).read()
    assert engine.tokenizer.encode(text)[:512] == ref["ids"]


def test_teacher_forced_logits_and_perplexity_match(model):
    name, engine, ref = model
    ids = ref["ids"]
    logits = engine.score(ids)
    logit_range = torch.tensor(ref["logit_max"]) - torch.tensor(ref["logit_min"])
    ours_top = logits.gather(1, torch.tensor(ref["top_ids"]))
    diff = (ours_top - torch.tensor(ref["top_logits"])).abs().max(dim=1).values
    assert bool((diff <= 1e-3 * logit_range).all()), float((diff / logit_range).max())
    assert torch.allclose(logits.max(dim=1).values, torch.tensor(ref["logit_max"]),
                          atol=float(1e-3 * logit_range.min()), rtol=0)
    assert torch.allclose(logits.min(dim=1).values, torch.tensor(ref["logit_min"]),
                          atol=float(1e-3 * logit_range.min()), rtol=0)
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    ours = logprobs[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    ppl, ref_ppl = _perplexity(ours), _perplexity(ref["next_logprob"])
    assert abs(ppl - ref_ppl) / ref_ppl <= 1e-3, (ppl, ref_ppl)


def test_greedy_continuations_match(model):
    name, engine, ref = model
    for prompt, expected in ref["greedy"].items():
        assert engine.generate(engine.tokenizer.encode(prompt), GREEDY) == expected, prompt


@pytest.mark.reference
def test_every_logit_matches_live_transformers(model):
    transformers = pytest.importorskip("transformers")
    from tests.fixtures.make_hf_fixture import load_hf

    name, engine, ref = model
    hf, _ = load_hf(name)
    ids = ref["ids"]
    with torch.inference_mode():
        expected = hf(torch.tensor([ids])).logits[0].float()
    logit_range = float(expected.max() - expected.min())
    assert float((engine.score(ids) - expected).abs().max()) <= 1e-3 * logit_range
    for prompt in ref["greedy"]:
        prompt_ids = engine.tokenizer.encode(prompt)
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=32, do_sample=False)
        assert engine.generate(prompt_ids, GREEDY) == out[0, len(prompt_ids):].tolist(), prompt
