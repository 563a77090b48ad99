"""What the sampler reports about a sampled token when a request asks for logprobs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLogprobs:
    """Log-probabilities of one sampled token under the distribution it was drawn from."""

    logprob: float  # of the chosen token
    top: tuple[tuple[int, float], ...]  # (token id, logprob), most likely first; -inf ones left out
