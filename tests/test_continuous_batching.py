"""16 concurrent greedy requests under continuous batching give each request's batch-1 output
token for token, on both bundled models; one variant forces chunked prefill and preemption."""

from __future__ import annotations

import os

import pytest

from backends.engine_config import EngineConfig
from backends.loader import load_engine
from backends.sampling_params import SamplingParams

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = open(os.path.join(HERE, "fixtures", "fidelity_text.txt")).read()
NUM_REQUESTS = 16


def prompts(tokenizer) -> list[list[int]]:
    """Mixed lengths (3 to 78 tokens), different starting points in the text."""
    ids = tokenizer.encode(TEXT, add_special=False)
    bos = tokenizer.encode("")  # [BOS] where the model adds one, else []
    return [bos + ids[17 * i: 17 * i + 3 + 5 * i] for i in range(NUM_REQUESTS)]


def run_concurrently(engine, requests, max_tokens):
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    ids = [engine.add_request(p, params) for p in requests]
    out = {i: [] for i in ids}
    while engine.has_unfinished_requests():
        for step_out in engine.step():
            out[step_out.request_id].extend(step_out.new_token_ids)
    return [out[i] for i in ids]


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_concurrent_greedy_equals_batch_one(name):
    max_tokens = 10
    engine = load_engine(EngineConfig(name=name, model=f"bundled:{name}", max_model_len=512,
                                      enable_prefix_caching=False), kv_cache_bytes=64 << 20)
    requests = prompts(engine.tokenizer)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    expected = [engine.generate(p, params) for p in requests]
    assert run_concurrently(engine, requests, max_tokens) == expected

    # Chunked prefill (32 tokens a step) and a pool of 14 pages: requests are preempted and
    # recomputed, with prefix caching on.
    page_bytes = engine.pool.page_bytes
    tight = load_engine(EngineConfig(name=name, model=f"bundled:{name}", max_model_len=512,
                                     max_num_batched_tokens=32), kv_cache_bytes=14 * page_bytes)
    assert run_concurrently(tight, requests, max_tokens) == expected
    assert tight.scheduler.num_preemptions > 0
    assert tight.pool.blocks.num_free == tight.pool.blocks.num_blocks
