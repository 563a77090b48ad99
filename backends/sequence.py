"""One request's state inside an engine: its tokens, its KV blocks, its progress."""

from __future__ import annotations

import enum

import torch

from backends.outputs import FinishReason
from backends.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued; holds no blocks
    RUNNING = "running"  # in the batch; holds blocks for its computed tokens
    FINISHED = "finished"


class Sequence:
    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 arrival: int) -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.params = params
        self.arrival = arrival  # admission order, for FCFS
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.num_cached_prompt_tokens = 0  # prompt tokens found in the prefix cache
        self.block_hashes: list[bytes] = []  # chain hashes of the full blocks known so far
        self.num_registered_blocks = 0  # leading blocks of block_table already in the cache
        self.admitted = False  # admitted at least once (preemption re-admits)
        self.finish_reason: FinishReason | None = None
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
