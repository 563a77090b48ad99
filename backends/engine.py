"""An in-process engine: one model, its view of the shared KV pool, a continuous-batching scheduler.

    engine.add_request(prompt_token_ids, params) -> request_id
    engine.step() -> [StepOutput, ...]     # one batched forward pass over every running request
    engine.abort(request_id)

Not thread-safe: one thread (the gateway's engine loop) owns it.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from backends.engine_config import EngineConfig
from backends.engine_kv_tier import EngineKVTier
from backends.engine_stats import EngineStats
from backends.kv_pool import KVLayout, KVPool
from backends.kv_tier import KVTier
from backends.model_config import ModelConfig
from backends.model_runner import ModelRunner
from backends.outputs import FinishReason, StepOutput
from backends.paged_kv_cache import PagedKVCache
from backends.sampling_params import SamplingParams
from backends.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from backends.sequence import Sequence
from backends.text_stream import TextStream
from backends.token_logprobs import TokenLogprobs

if TYPE_CHECKING:
    from backends.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class Engine:
    def __init__(self, config: EngineConfig, model_config: ModelConfig, model: nn.Module,
                 tokenizer: "Tokenizer", pool: KVPool, layout: KVLayout, fingerprint: str,
                 kv_tier: KVTier | None = None) -> None:
        self.config = config
        self.name = config.name
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.pool = pool
        self.max_model_len = min(config.max_model_len, model_config.max_position_embeddings)
        self.kv_cache = PagedKVCache(pool, layout)
        self.block_size = self.kv_cache.block_size
        # The fingerprint keys prefix hashes: same weights, engine, KV dtype and page shape only.
        self.fingerprint = f"{fingerprint}:{config.engine}:{layout.dtype}:{self.block_size}"
        self.scheduler = Scheduler(
            SchedulerConfig(self.block_size, config.max_num_batched_tokens, config.max_num_seqs,
                            self.max_model_len, config.enable_prefix_caching),
            pool.blocks, frozenset(tokenizer.eos_token_ids), self.fingerprint)
        self.runner = ModelRunner(model, self.kv_cache, frozenset(tokenizer.eos_token_ids))
        self._arrivals = itertools.count()
        self._text_streams: dict[str, TextStream] = {}  # request id -> its detokenizer and stop strings
        self.load_seconds: float | None = None  # set by the loader: time to build this engine
        # The shared Redis tier (None = off): fetches before admission, writes full blocks behind.
        self.kv_tier = EngineKVTier(kv_tier, self.scheduler, self.kv_cache, self.fingerprint) if kv_tier else None

    def add_request(self, prompt_token_ids: list[int], sampling_params: SamplingParams,
                    request_id: str | None = None) -> str:
        if not prompt_token_ids:
            raise ValueError("prompt must contain at least one token")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        request_id = request_id or uuid.uuid4().hex
        seq = Sequence(request_id, prompt_token_ids, sampling_params, next(self._arrivals))
        if self.kv_tier is None or not self.kv_tier.defer(seq):
            self.scheduler.add(seq)
        self._text_streams[request_id] = TextStream(self.tokenizer, sampling_params)
        return request_id

    def step(self) -> list[StepOutput]:
        if self.kv_tier is not None:
            self.kv_tier.admit_ready()
        step = self.scheduler.schedule()
        sampled, failed = self._run(step) if step.scheduled else ({}, {})
        for request_id in failed:
            self.scheduler.abort(request_id)  # reported (with its error) by update() below
        outputs = self.scheduler.update(step, {rid: t for rid, (t, _) in sampled.items()})
        if failed:
            outputs = [replace(o, error=failed.get(o.request_id)) for o in outputs]
        if self.kv_tier is not None:
            self.kv_tier.write_behind()
        return [self._finish_output(out, sampled.get(out.request_id)) for out in outputs]

    def _run(self, step: SchedulerOutput) -> tuple[dict[str, tuple[int, TokenLogprobs | None]], dict[str, str]]:
        """Run the step; if it raises, run its sequences one by one so that only the ones that
        fail on their own are failed (their error by request id), and the rest of the batch goes on.

        NOTE: re-running is safe: a forward pass writes the same K/V into the same slots.
        """
        try:
            return self.runner.run(step), {}
        except Exception:  # noqa: BLE001 - isolated below; a systematic fault fails each request
            logger.exception("engine %r: a batched step failed; retrying its %d sequences one by one",
                             self.name, len(step.scheduled))
        sampled: dict[str, tuple[int, TokenLogprobs | None]] = {}
        failed: dict[str, str] = {}
        for item in step.scheduled:
            try:
                sampled.update(self.runner.run(SchedulerOutput([item])))
            except Exception as exc:  # noqa: BLE001 - this request's own failure
                failed[item.seq.request_id] = f"{type(exc).__name__}: {exc}"
        return sampled, failed

    def abort(self, request_id: str) -> None:
        if self.kv_tier is None or not self.kv_tier.abort(request_id):
            self.scheduler.abort(request_id)

    def _finish_output(self, out: StepOutput, sampled: tuple[int, TokenLogprobs | None] | None) -> StepOutput:
        """Detokenize the step's tokens, cut stop strings (finishing the request on a match),
        attach logprobs."""
        text_stream = self._text_streams.get(out.request_id)
        if text_stream is None:
            return out
        text, stop = text_stream.add(out.new_token_ids)
        finish_reason, stop_reason = out.finish_reason, None
        if stop is not None:  # the text ended on a stop string
            if finish_reason is None:
                self.scheduler.finish(out.request_id, FinishReason.STOP)
            finish_reason, stop_reason = FinishReason.STOP, stop
        elif finish_reason is FinishReason.STOP and out.new_token_ids:
            stop_reason = out.new_token_ids[-1]  # EOS or a stop token id
        if finish_reason is not None:
            text += text_stream.flush()
            del self._text_streams[out.request_id]
        logprobs = (sampled[1],) if sampled is not None and sampled[1] is not None else ()
        return replace(out, text=text, logprobs=logprobs, finish_reason=finish_reason, stop_reason=stop_reason)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or (self.kv_tier is not None and self.kv_tier.has_pending())

    def stats(self) -> EngineStats:
        fill: dict[int, int] = {}  # block id -> computed tokens in it (shared blocks counted once)
        for seq in self.scheduler.running:
            for j, block in enumerate(seq.block_table):
                tokens = min(self.block_size, max(0, seq.num_computed_tokens - j * self.block_size))
                fill[block] = max(fill.get(block, 0), tokens)
        blocks = self.pool.blocks
        sched = self.scheduler
        return EngineStats(
            num_running=len(sched.running),
            num_waiting=len(sched.waiting) + (self.kv_tier.num_pending if self.kv_tier else 0),
            num_preemptions=sched.num_preemptions,
            pool_blocks_total=blocks.num_blocks, pool_blocks_used=blocks.num_used,
            pool_blocks_free=blocks.num_free, pool_blocks_cached=blocks.num_cached_free,
            blocks_held=len(fill), slots_allocated=len(fill) * self.block_size,
            slots_filled=sum(fill.values()), page_waste=self.pool.page_waste(self.kv_cache.layout),
            prefix_query_tokens=sched.prefix_query_tokens, prefix_hit_tokens=sched.prefix_hit_tokens,
            kv_tier=self.kv_tier.status() if self.kv_tier else None,
            kv_tier_loaded_tokens=self.kv_tier.loaded_tokens if self.kv_tier else 0)

    def generate(self, prompt_token_ids: list[int], sampling_params: SamplingParams) -> list[int]:
        """Run one request to completion (tests, benchmarks, the CLI); other requests may share steps."""
        request_id = self.add_request(prompt_token_ids, sampling_params)
        tokens: list[int] = []
        while True:
            for out in self.step():
                if out.request_id == request_id:
                    tokens.extend(out.new_token_ids)
                    if out.finished:
                        return tokens

    def score(self, token_ids: list[int], chunk_size: int = 512) -> torch.Tensor:
        """Teacher-forced logits [len(token_ids), vocab] (float32) through the same paged path."""
        if not 0 < len(token_ids) <= self.max_model_len:
            raise ValueError(f"need 1..{self.max_model_len} tokens, got {len(token_ids)}")
        num_blocks = -(-len(token_ids) // self.block_size)
        if not self.pool.blocks.can_allocate(num_blocks):
            raise MemoryError("not enough free KV blocks to score this text")
        table = self.pool.blocks.allocate(num_blocks)
        try:
            chunks = []
            for start in range(0, len(token_ids), chunk_size):
                ids = token_ids[start:start + chunk_size]
                hidden, _ = self.runner.forward(ids, [len(ids)], [start + len(ids)], [table])
                with torch.inference_mode():
                    chunks.append(self.runner.model.compute_logits(hidden))
            return torch.cat(chunks)
        finally:
            self.pool.blocks.free(table[::-1])
