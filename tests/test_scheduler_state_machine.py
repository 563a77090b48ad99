"""Random add / step / abort / finish / preempt sequences keep the pool's invariants, and once
everything has ended every block is free (cached or not): none leaked."""

from __future__ import annotations

from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from backends.block_pool import BlockPool
from backends.sampling_params import SamplingParams
from backends.scheduler import Scheduler, SchedulerConfig
from backends.sequence import Sequence

EOS = 0
NUM_BLOCKS = 8
BLOCK_SIZE = 4


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool = BlockPool(NUM_BLOCKS)
        # A small token budget forces chunked prefill; a small pool forces preemption.
        self.sched = Scheduler(SchedulerConfig(BLOCK_SIZE, 10, 6, 40), self.pool, frozenset({EOS}), "fp")
        self.next_id = 0
        self.live: set[str] = set()

    @rule(prompt=st.lists(st.integers(1, 3), min_size=1, max_size=16),
          max_tokens=st.integers(1, 16))
    def add(self, prompt, max_tokens):
        # Prompts over a 3-token alphabet share prefixes often, exercising the prefix cache.
        rid = f"r{self.next_id}"
        seq = Sequence(rid, prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens), self.next_id)
        self.next_id += 1
        try:
            self.sched.add(seq)
        except ValueError:
            return  # larger than the whole pool: rejected up front, nothing held
        self.live.add(rid)

    @rule(tokens=st.lists(st.integers(0, 3), min_size=8, max_size=8))
    def step(self, tokens):
        step = self.sched.schedule()
        sampled = {item.seq.request_id: tokens[i % 8] for i, item in enumerate(step.scheduled)}
        for out in self.sched.update(step, sampled):
            if out.finished:
                self.live.discard(out.request_id)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def abort(self, data):
        rid = data.draw(st.sampled_from(sorted(self.live)))
        assert self.sched.abort(rid)
        self.live.discard(rid)

    @invariant()
    def blocks_are_free_or_held_by_exactly_their_tables(self):
        held = Counter(b for seq in self.sched.running for b in seq.block_table)
        free = set(self.pool.free_queue())
        for b in range(NUM_BLOCKS):
            assert self.pool.ref_count(b) == held[b]
            assert (b in free) == (held[b] == 0)
        assert all(not seq.block_table for seq in self.sched.waiting)

    def teardown(self):
        for rid in sorted(self.live):
            self.sched.abort(rid)
        self.sched.update(self.sched.schedule(), {})
        assert not self.sched.has_unfinished()
        assert self.pool.num_free == NUM_BLOCKS


SchedulerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestScheduler = SchedulerMachine.TestCase
