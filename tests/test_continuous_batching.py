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


def test_two_engines_share_one_pool_and_report_stats():
    from backends.loader import load_engines

    engines = load_engines([EngineConfig(name="s", model="bundled:smollm2-135m", max_model_len=256),
                            EngineConfig(name="g", model="bundled:gemma3-270m", max_model_len=256)],
                           kv_cache_bytes=8 << 20)
    smol, gemma = engines["s"], engines["g"]
    assert smol.pool is gemma.pool
    # float32 pages: 16 SmolLM2 tokens = 20 Gemma tokens = 737,280 bytes, no rounding waste.
    assert (smol.pool.page_bytes, smol.block_size, gemma.block_size) == (737280, 16, 20)
    assert smol.pool.blocks.num_blocks == (8 << 20) // 737280 == 11
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    prompt = smol.tokenizer.encode(TEXT)[:40]  # 2 full SmolLM2 blocks + 8 tokens
    smol.add_request(prompt, params)
    smol.step()  # prefill: 3 pages held, 40 of 48 slots filled
    stats = smol.stats()
    assert (stats.num_running, stats.blocks_held, stats.slots_allocated, stats.slots_filled) == (1, 3, 48, 40)
    assert stats.pool_blocks_used == 3 and stats.page_waste == 0.0
    assert abs(stats.kv_waste - 8 / 48) < 1e-12
    while smol.has_unfinished_requests():
        smol.step()
    # The finished request's full blocks stay cached and serve the same prompt again...
    first = smol.generate(prompt, params)
    assert smol.stats().prefix_hit_tokens == 32
    assert smol.stats().pool_blocks_cached >= 2
    # ...until pressure from the other engine evicts them (LRU across engines).
    gemma.generate(gemma.tokenizer.encode(TEXT)[:200], params)  # 204 tokens: all 11 pages
    assert smol.pool.blocks.num_evictions >= 2
    assert smol.generate(prompt, params) == first
    assert smol.stats().prefix_hit_tokens == 32  # no new hit: recomputed
