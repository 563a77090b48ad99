"""What an engine step hands back to its caller (the gateway's engine loop)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from backends.token_logprobs import TokenLogprobs


class FinishReason(str, Enum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens reached, or the model's context is full
    ABORTED = "aborted"  # abort() was called (client cancel, deadline)


@dataclass(frozen=True)
class StepOutput:
    """New tokens of one request produced by one engine step."""

    request_id: str
    new_token_ids: tuple[int, ...]  # tokens generated this step (empty for a prefill-only chunk)
    finish_reason: FinishReason | None  # set on the request's last output
    num_prompt_tokens: int  # prompt length, for usage accounting
    num_cached_prompt_tokens: int  # prompt tokens served from the prefix cache
    text: str = ""  # text delta of new_token_ids: UTF-8 safe, stop strings cut (set by the engine)
    logprobs: tuple[TokenLogprobs, ...] = ()  # one per new token when params.logprobs > 0
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it, if any
    error: str | None = None  # set (with ABORTED) when the engine failed this request on its own

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
