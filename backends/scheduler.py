"""Continuous batching: which sequences run this step and how many tokens each. Pure Python.

Every step: running sequences first (FCFS), then waiting ones while the token budget and the
pool allow. A long prompt is prefilled in chunks of at most the remaining budget, so running
decodes keep moving. When the pool runs dry, the most recently admitted running sequence is
preempted: its blocks are freed and it is recomputed later (vLLM's recompute preemption).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from backends.block_pool import BlockPool
from backends.outputs import FinishReason, StepOutput
from backends.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    block_size: int = 16  # tokens per KV block
    max_num_batched_tokens: int = 512  # token budget of one step (prefill chunks + decodes)
    max_num_seqs: int = 64  # sequences in one step at most
    max_model_len: int = 2048  # prompt + completion tokens of one sequence at most

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_batched_tokens", "max_num_seqs", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int  # tokens computed this step, starting at seq.num_computed_tokens

    @property
    def samples(self) -> bool:
        """True if this chunk reaches the sequence's last token, so a new token is sampled."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


class Scheduler:
    def __init__(self, config: SchedulerConfig, pool: BlockPool, eos_token_ids: frozenset[int]) -> None:
        self.config = config
        self.pool = pool
        self.eos_token_ids = eos_token_ids
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._aborted: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        max_len = min(self.config.max_model_len, seq.num_prompt_tokens + seq.params.max_tokens)
        if seq.num_prompt_tokens >= self.config.max_model_len:
            raise ValueError(f"prompt of {seq.num_prompt_tokens} tokens leaves no room in the "
                             f"context of {self.config.max_model_len} tokens")
        if self._blocks_for(max_len) > self.pool.num_blocks:
            raise ValueError(f"request needs {self._blocks_for(max_len)} KV blocks, the pool has "
                             f"{self.pool.num_blocks}")
        self.waiting.append(seq)

    def abort(self, request_id: str) -> bool:
        for seq in list(self.waiting) + self.running:
            if seq.request_id == request_id:
                if seq in self.running:
                    self.running.remove(seq)
                else:
                    self.waiting.remove(seq)
                self._finish(seq, FinishReason.ABORTED)
                self._aborted.append(seq)
                return True
        return False

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self._aborted)

    def schedule(self) -> list[ScheduledSeq]:
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledSeq] = []
        for seq in list(self.running):
            if seq not in self.running or budget == 0:
                continue  # preempted by an earlier sequence of this loop, or budget spent
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self._grow(seq, seq.num_computed_tokens + num_new):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq in self.running:
                scheduled.append(ScheduledSeq(seq, num_new))
                budget -= num_new
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self._grow(seq, seq.num_computed_tokens + num_new):
                break  # FCFS: nobody overtakes the head of the queue
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSeq(seq, num_new))
            budget -= num_new
        return scheduled

    def update(self, scheduled: list[ScheduledSeq], sampled: dict[str, int]) -> list[StepOutput]:
        """Record computed tokens and sampled ones; finish sequences; report what changed."""
        outputs = [self._output(seq, ()) for seq in self._aborted]
        self._aborted.clear()
        for item in scheduled:
            seq = item.seq
            if seq.is_finished:
                continue  # aborted while the step ran
            samples = item.samples
            seq.num_computed_tokens += item.num_new_tokens
            if not samples:
                continue
            token = sampled[seq.request_id]
            seq.output_token_ids.append(token)
            reason = self._finish_reason(seq, token)
            if reason is not None:
                self.running.remove(seq)
                self._finish(seq, reason)
            outputs.append(self._output(seq, (token,)))
        return outputs

    def _finish_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        p = seq.params
        if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            return FinishReason.STOP
        if len(seq.output_token_ids) >= p.max_tokens or seq.num_tokens >= self.config.max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        self.pool.free(seq.block_table)
        seq.block_table = []

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.pool.free(seq.block_table)
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Make seq's block table cover num_tokens; False (and no change) if the pool is short."""
        needed = self._blocks_for(num_tokens) - len(seq.block_table)
        if needed <= 0:
            return True
        if not self.pool.can_allocate(needed):
            return False
        seq.block_table.extend(self.pool.allocate(needed))
        return True

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.config.block_size)

    @staticmethod
    def _output(seq: Sequence, new_token_ids: tuple[int, ...]) -> StepOutput:
        return StepOutput(seq.request_id, new_token_ids, seq.finish_reason, seq.num_prompt_tokens,
                          seq.num_cached_prompt_tokens)
