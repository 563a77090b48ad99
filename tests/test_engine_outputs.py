"""The engine's text deltas: detokenized, stop strings cut (and the request finished), logprobs
attached, and seeded requests reproducible whatever shares their batch."""

from __future__ import annotations

import random

import pytest

from backends.engine_config import EngineConfig
from backends.loader import load_engine
from backends.outputs import FinishReason
from backends.sampling_params import SamplingParams

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def engine():
    return load_engine(EngineConfig(name="smollm2-135m", model="bundled:smollm2-135m", max_model_len=512),
                       kv_cache_bytes=64 << 20)


def run(engine, prompt_ids, params):
    rid = engine.add_request(prompt_ids, params)
    outs = []
    while True:
        outs += [o for o in engine.step() if o.request_id == rid]
        if outs and outs[-1].finished:
            return outs


def test_text_deltas_join_to_the_decoded_tokens(engine):
    ids = engine.tokenizer.encode(PROMPT)
    outs = run(engine, ids, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    tokens = [t for o in outs for t in o.new_token_ids]
    assert "".join(o.text for o in outs) == engine.tokenizer.decode(tokens)
    assert outs[-1].finish_reason is FinishReason.LENGTH and outs[-1].stop_reason is None


def test_stop_string_ends_the_request_and_frees_its_blocks(engine):
    ids = engine.tokenizer.encode(PROMPT)
    greedy = run(engine, ids, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    full = "".join(o.text for o in greedy)
    assert full.startswith(" Paris.\n\nThe")  # FACTS.md: llama.cpp's greedy continuation
    outs = run(engine, ids, SamplingParams(temperature=0, max_tokens=12, stop=("\n\n",)))
    assert "".join(o.text for o in outs) == " Paris."
    assert outs[-1].finish_reason is FinishReason.STOP and outs[-1].stop_reason == "\n\n"
    assert len([t for o in outs for t in o.new_token_ids]) < 12
    assert not engine.has_unfinished_requests()
    assert engine.pool.blocks.num_used == 0


def test_stop_strings_wait_for_min_tokens(engine):
    ids = engine.tokenizer.encode(PROMPT)
    outs = run(engine, ids, SamplingParams(temperature=0, max_tokens=12, min_tokens=12, stop=("\n\n",),
                                           ignore_eos=True))
    assert outs[-1].finish_reason is FinishReason.LENGTH
    assert "".join(o.text for o in outs).startswith(" Paris.\n\nThe")


def test_logprobs_ride_with_their_tokens(engine):
    ids = engine.tokenizer.encode(PROMPT)
    outs = run(engine, ids, SamplingParams(temperature=0, max_tokens=4, logprobs=3, ignore_eos=True))
    sampled = [o for o in outs if o.new_token_ids]
    for o in sampled:
        (lp,) = o.logprobs
        assert len(lp.top) == 3
        assert lp.top[0][0] == o.new_token_ids[0]  # greedy: the chosen token is the most likely
        assert lp.logprob == lp.top[0][1] <= 0.0
    no_lp = run(engine, ids, SamplingParams(temperature=0, max_tokens=2))
    assert all(o.logprobs == () for o in no_lp)


def test_seeded_request_is_reproducible_under_concurrent_load(engine):
    """The same seeded request alone, then amid 12 others (seeded, unseeded, greedy, other
    parameters) that join and leave the batch at different steps: same tokens."""
    tok = engine.tokenizer
    target_ids = tok.encode("Once upon a time")
    target = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=1234, max_tokens=24, ignore_eos=True)
    alone = [t for o in run(engine, target_ids, target) for t in o.new_token_ids]

    rng = random.Random(7)
    words = "the a river stone light quiet north engine paper seven".split()
    others = []
    for i in range(12):
        prompt = tok.encode(" ".join(rng.choice(words) for _ in range(rng.randint(2, 40))))
        params = SamplingParams(temperature=rng.choice([0.0, 0.7, 1.3]), top_p=rng.choice([1.0, 0.8]),
                                seed=rng.choice([None, i]), max_tokens=rng.randint(1, 30), ignore_eos=True)
        others.append((prompt, params))
    # Half the others are in flight before the target arrives; the rest join while it decodes.
    for prompt, params in others[:6]:
        engine.add_request(prompt, params)
    engine.step()
    rid = engine.add_request(target_ids, target)
    got: list[int] = []
    pending = others[6:]
    while engine.has_unfinished_requests():
        if pending and rng.random() < 0.5:
            engine.add_request(*pending.pop())
        for o in engine.step():
            if o.request_id == rid:
                got.extend(o.new_token_ids)
    assert got == alone
