"""Continuous batching: which sequences run this step and how many tokens each. Pure Python.

Every step: running sequences first (FCFS), then waiting ones while the token budget and the
pool allow. A long prompt is prefilled in chunks of at most the remaining budget, so running
decodes keep moving. When the pool runs dry, the most recently admitted running sequence is
preempted: its blocks are freed and it is recomputed later (vLLM's recompute preemption).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from backends.block_pool import BlockPool
from backends.outputs import FinishReason, StepOutput
from backends.prefix_hash import ROOT_HASH, block_hash
from backends.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    block_size: int = 16  # tokens per KV block
    max_num_batched_tokens: int = 512  # token budget of one step (prefill chunks + decodes)
    max_num_seqs: int = 64  # sequences in one step at most
    max_model_len: int = 2048  # prompt + completion tokens of one sequence at most
    enable_prefix_caching: bool = True  # reuse cached full blocks of identical prefixes

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


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: list[ScheduledSeq]  # what runs this step, in batch order


class Scheduler:
    def __init__(self, config: SchedulerConfig, pool: BlockPool, eos_token_ids: frozenset[int],
                 fingerprint: str = "") -> None:
        self.config = config
        self.pool = pool
        self.eos_token_ids = eos_token_ids
        self.fingerprint = fingerprint  # part of every block hash: no sharing across models
        self.prefix_query_tokens = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hit_tokens = 0  # of those, tokens served from cached blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._aborted: list[Sequence] = []
        self.num_preemptions = 0
        # Called with (block id, chain hash) when a computed full block joins the prefix cache
        # (the KV tier writes it behind); None = nobody listens.
        self.on_block_cached: Callable[[int, bytes], None] | None = None

    def add(self, seq: Sequence) -> None:
        self.check(seq)
        self.waiting.append(seq)

    def check(self, seq: Sequence) -> None:
        """Raise ValueError if seq can never run here (too long for the context or the pool)."""
        max_len = min(self.config.max_model_len, seq.num_prompt_tokens + seq.params.max_tokens)
        if seq.num_prompt_tokens >= self.config.max_model_len:
            raise ValueError(f"prompt of {seq.num_prompt_tokens} tokens leaves no room in the "
                             f"context of {self.config.max_model_len} tokens")
        if self._blocks_for(max_len) > self.pool.num_blocks:
            raise ValueError(f"request needs {self._blocks_for(max_len)} KV blocks, the pool has "
                             f"{self.pool.num_blocks}")

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

    def finish(self, request_id: str, reason: FinishReason) -> None:
        """End a running sequence now (a stop string matched after the step reported it)."""
        for seq in self.running:
            if seq.request_id == request_id:
                self.running.remove(seq)
                self._finish(seq, reason)
                return

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self._aborted)

    def schedule(self) -> SchedulerOutput:
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
            num_new = self._admit(seq, budget)
            if not num_new:
                break  # FCFS: nobody overtakes the head of the queue
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSeq(seq, num_new))
            budget -= num_new
        return SchedulerOutput(scheduled)

    def update(self, step: SchedulerOutput, sampled: dict[str, int]) -> list[StepOutput]:
        """Record computed tokens and sampled ones; finish sequences; report what changed."""
        outputs = [self._output(seq, ()) for seq in self._aborted]
        self._aborted.clear()
        for item in step.scheduled:
            seq = item.seq
            if seq.is_finished:
                continue  # aborted while the step ran
            samples = item.samples
            seq.num_computed_tokens += item.num_new_tokens
            self._cache_full_blocks(seq)
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
        self._release(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _release(self, seq: Sequence) -> None:
        # Tail first, so LRU eviction drops the ends of prefixes before their shared starts.
        self.pool.free(seq.block_table[::-1])
        seq.block_table = []
        seq.num_registered_blocks = 0

    def _admit(self, seq: Sequence, budget: int) -> int:
        """Give a waiting sequence its cached prefix and blocks for its first chunk; return the
        chunk's token count, or 0 (and change nothing) if the pool cannot hold it."""
        hits: list[int] = []
        if self.config.enable_prefix_caching:
            # At least one token is always computed: its logits pick the next token.
            hits = self.pool.lookup(self.prefix_hashes(seq))
        num_cached = len(hits) * self.config.block_size
        num_new = min(seq.num_tokens - num_cached, budget)
        needed = self._blocks_for(num_cached + num_new) - len(hits)
        revived = sum(1 for b in hits if self.pool.ref_count(b) == 0)  # leave the free queue
        if needed > self.pool.num_free - revived:
            return 0
        self.pool.acquire(hits)
        seq.block_table = hits + self.pool.allocate(needed)
        seq.num_registered_blocks = len(hits)
        seq.num_computed_tokens = num_cached
        if not seq.admitted:
            seq.admitted = True
            seq.num_cached_prompt_tokens = num_cached
            if self.config.enable_prefix_caching:
                self.prefix_query_tokens += seq.num_prompt_tokens
                self.prefix_hit_tokens += num_cached
        return num_new

    def prefix_hashes(self, seq: Sequence) -> list[bytes]:
        """Chain hashes of the prompt's full blocks that a prefix hit may cover (not the last token's)."""
        self._extend_hashes(seq, seq.num_tokens)
        return seq.block_hashes[:(seq.num_tokens - 1) // self.config.block_size]

    def _extend_hashes(self, seq: Sequence, num_tokens: int) -> None:
        """Hash every full block among the first num_tokens tokens that has no hash yet."""
        bs = self.config.block_size
        if len(seq.block_hashes) >= num_tokens // bs:
            return
        tokens = seq.token_ids  # prompt + output, built once
        for i in range(len(seq.block_hashes), num_tokens // bs):
            parent = seq.block_hashes[i - 1] if i else ROOT_HASH
            seq.block_hashes.append(block_hash(parent, self.fingerprint, tokens[i * bs:(i + 1) * bs]))

    def _cache_full_blocks(self, seq: Sequence) -> None:
        if not self.config.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.config.block_size
        if num_full <= seq.num_registered_blocks:
            return
        self._extend_hashes(seq, seq.num_computed_tokens)
        for i in range(seq.num_registered_blocks, num_full):
            self.pool.cache(seq.block_table[i], seq.block_hashes[i])
            if self.on_block_cached is not None:
                self.on_block_cached(seq.block_table[i], seq.block_hashes[i])
        seq.num_registered_blocks = num_full

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
