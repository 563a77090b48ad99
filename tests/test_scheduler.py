"""Scheduler and block pool on tiny pools: exact block ids, budgets, preemption, finishing."""

from __future__ import annotations

import pytest

from backends.block_pool import BlockPool
from backends.outputs import FinishReason
from backends.sampling_params import SamplingParams
from backends.scheduler import Scheduler, SchedulerConfig
from backends.sequence import Sequence

EOS = 99


def make(num_blocks=8, block_size=4, budget=16, max_seqs=8, max_len=64):
    pool = BlockPool(num_blocks)
    return Scheduler(SchedulerConfig(block_size, budget, max_seqs, max_len), pool, frozenset({EOS})), pool


def seq(rid, n, max_tokens=4, arrival=0, first=1, **kw):
    """A greedy request whose prompt is first, first + 1, ..., first + n - 1."""
    return Sequence(rid, list(range(first, first + n)),
                    SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw), arrival)


def test_pool_allocates_in_order_and_returns_freed_blocks_last():
    pool = BlockPool(4)
    assert pool.allocate(2) == [0, 1]
    pool.free([0])
    assert pool.allocate(3) == [2, 3, 0]
    assert pool.num_free == 0
    with pytest.raises(MemoryError):
        pool.allocate(1)
    with pytest.raises(RuntimeError):
        BlockPool(2).free([1])


def test_prefill_is_chunked_by_the_token_budget():
    sched, pool = make(budget=6)
    a = seq("a", 10)
    sched.add(a)
    step = sched.schedule()
    assert [(s.seq.request_id, s.num_new_tokens, s.samples) for s in step.scheduled] == [("a", 6, False)]
    assert a.block_table == [0, 1]
    assert sched.update(step, {}) == []
    step = sched.schedule()
    assert [(s.num_new_tokens, s.samples) for s in step.scheduled] == [(4, True)]
    assert a.block_table == [0, 1, 2]
    out = sched.update(step, {"a": 7})
    assert [(o.request_id, o.new_token_ids, o.finish_reason) for o in out] == [("a", (7,), None)]


def test_decodes_run_before_new_prefills_share_the_budget():
    sched, _ = make(budget=8)
    a, b = seq("a", 4), seq("b", 12, arrival=1)
    sched.add(a)
    sched.update(sched.schedule(), {"a": 5})
    sched.add(b)
    step = sched.schedule()
    assert [(s.seq.request_id, s.num_new_tokens) for s in step.scheduled] == [("a", 1), ("b", 7)]


def test_finish_on_eos_stop_token_and_length_frees_blocks():
    sched, pool = make()
    a, b, c = seq("a", 3), seq("b", 3, arrival=1, stop_token_ids=(42,)), seq("c", 3, max_tokens=1, arrival=2)
    for s in (a, b, c):
        sched.add(s)
    out = sched.update(sched.schedule(), {"a": EOS, "b": 42, "c": 5})
    assert [(o.request_id, o.finish_reason) for o in out] == [
        ("a", FinishReason.STOP), ("b", FinishReason.STOP), ("c", FinishReason.LENGTH)]
    assert pool.num_free == 8 and not sched.has_unfinished()


def test_ignore_eos_keeps_generating():
    sched, _ = make()
    a = seq("a", 3, ignore_eos=True)
    sched.add(a)
    out = sched.update(sched.schedule(), {"a": EOS})
    assert out[0].finish_reason is None


def test_pool_pressure_preempts_the_newest_and_recomputes_it_later():
    sched, pool = make(num_blocks=3, block_size=2)
    a, b = seq("a", 2, max_tokens=3), seq("b", 2, max_tokens=3, arrival=1, first=50)
    sched.add(a)
    sched.add(b)
    sched.update(sched.schedule(), {"a": 10, "b": 20})  # a: [0], b: [1]; each now 3 tokens
    step = sched.schedule()  # a needs block 2; b then needs one more and none is left
    assert [(s.seq.request_id, s.num_new_tokens) for s in step.scheduled] == [("a", 1)]
    assert a.block_table == [0, 2] and b.block_table == [] and sched.num_preemptions == 1
    assert list(sched.waiting) == [b] and b.num_computed_tokens == 0
    sched.update(step, {"a": 11})
    out = sched.update(sched.schedule(), {"a": 12})
    assert out[0].finish_reason is FinishReason.LENGTH
    step = sched.schedule()  # b's first block is still cached: only its last token is recomputed
    assert [(s.seq.request_id, s.num_new_tokens, s.samples) for s in step.scheduled] == [("b", 1, True)]
    # a freed its blocks tail first (2, then 0), so 2 is next out of the free queue.
    assert b.block_table == [1, 2] and b.num_computed_tokens == 2


def test_abort_reports_once_and_frees():
    sched, pool = make()
    a = seq("a", 5)
    sched.add(a)
    step = sched.schedule()
    assert sched.abort("a") and not sched.abort("missing")
    out = sched.update(step, {"a": 1})
    assert [(o.request_id, o.new_token_ids, o.finish_reason) for o in out] == [("a", (), FinishReason.ABORTED)]
    assert pool.num_free == 8 and not sched.has_unfinished()


def test_requests_that_cannot_fit_are_rejected_up_front():
    sched, _ = make(num_blocks=2, block_size=4, max_len=64)
    with pytest.raises(ValueError, match="KV blocks"):
        sched.add(seq("a", 6, max_tokens=8))
    sched2, _ = make(max_len=8)
    with pytest.raises(ValueError, match="context"):
        sched2.add(seq("b", 8))


def test_prefix_hit_reuses_blocks_and_always_recomputes_one_token():
    sched, pool = make(num_blocks=8, block_size=4)
    a = seq("a", 8, max_tokens=1)
    sched.add(a)
    sched.update(sched.schedule(), {"a": 5})  # a finishes; blocks 0, 1 cached, freed tail first
    assert pool.free_queue()[-2:] == [1, 0] and pool.block_hash(0) is not None
    b = seq("b", 8, max_tokens=1, arrival=1)  # the same 8 tokens: two full blocks
    sched.add(b)
    step = sched.schedule()
    # Only the first block is reused: the last prompt token must be computed for its logits.
    assert [(s.num_new_tokens, s.samples) for s in step.scheduled] == [(4, True)]
    assert b.block_table[0] == 0 and b.num_cached_prompt_tokens == 4
    assert (sched.prefix_query_tokens, sched.prefix_hit_tokens) == (16, 4)


def test_concurrent_identical_prefixes_share_blocks_by_reference():
    sched, pool = make(num_blocks=8, block_size=4)
    a = seq("a", 6, max_tokens=4)
    sched.add(a)
    sched.update(sched.schedule(), {"a": 5})  # block 0 = tokens 1..4, cached while a runs
    b = seq("b", 6, max_tokens=4, arrival=1)
    sched.add(b)
    sched.schedule()
    assert a.block_table[0] == b.block_table[0] == 0 and pool.ref_count(0) == 2
    sched.abort("a")
    assert pool.ref_count(0) == 1


def test_lru_eviction_takes_the_least_recently_freed_cached_block():
    pool = BlockPool(3)
    x, y = pool.allocate(2)
    pool.cache(x, b"x" * 32)
    pool.cache(y, b"y" * 32)
    pool.free([y, x])  # queue: 2, y, x
    assert pool.free_queue() == [2, y, x]
    assert pool.allocate(2) == [2, y]  # y's prefix is evicted, x's survives
    assert pool.lookup([b"x" * 32, b"y" * 32]) == [x]
    assert pool.lookup([b"y" * 32]) == [] and pool.num_evictions == 1
