"""Per-request sampling parameters.

Order of the logit transforms (the order vLLM and HF transformers use): temperature scales the
logits first, then top-k keeps the k largest, then top-p keeps the smallest set whose
probability mass reaches p among what remains. ``temperature == 0`` means greedy.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy (argmax); otherwise logits are divided by it
    top_k: int = 0  # 0 = off; otherwise keep the k most likely tokens
    top_p: float = 1.0  # 1.0 = off; nucleus mass kept after top-k
    seed: int | None = None  # per-request generator seed; None = nondeterministic
    max_tokens: int = 16  # completion tokens at most
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)  # extra ids that end the request
    ignore_eos: bool = False  # keep generating past the model's EOS token

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 100.0:
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if any(t < 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be non-negative, got {self.stop_token_ids}")
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
