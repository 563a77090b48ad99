"""Per-request sampling parameters.

The sampler (backends/sampler.py) applies them to a row of logits in this order, the order vLLM
and HF transformers use:

1. ``logit_bias`` is added;
2. ``repetition_penalty`` (prompt and output tokens), then ``presence_penalty`` and
   ``frequency_penalty`` (output tokens only); while fewer than ``min_tokens`` tokens have been
   generated, EOS and ``stop_token_ids`` are set to -inf;
3. greedy rows (``temperature == 0``) take the argmax here and stop;
4. ``adaptive_temperature`` multiplies the logits by beta >= 1 (backends/logits_processors.py);
5. the logits are divided by ``temperature``;
6. ``top_k`` keeps the k largest; ``top_p`` keeps the smallest set of what remains whose mass,
   renormalised over it, reaches p; ``min_p`` then keeps tokens with probability >= min_p times
   the most likely token's.

Every invalid value raises ValueError naming the field (the gateway maps it to INVALID_ARGUMENT).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MAX_STOP_STRINGS = 16
MAX_LOGPROBS = 20
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 100.0
MAX_ABS_LOGIT_BIAS = 100.0
# NOTE: dividing float32 logits by a smaller temperature can overflow; vLLM treats such
# temperatures as 0 for the same reason.
GREEDY_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 (or < 1e-5) = greedy; otherwise logits are divided by it
    top_k: int = 0  # 0 = off; otherwise keep the k most likely tokens
    top_p: float = 1.0  # 1.0 = off; nucleus mass kept after top-k, in (0, 1]
    min_p: float = 0.0  # 0 = off; keep tokens with p >= min_p * p_max, in [0, 1]
    repetition_penalty: float = 1.0  # 1 = off; in [0.01, 100]; prompt + output tokens (HF rule)
    presence_penalty: float = 0.0  # in [-2, 2]; subtracted once from every output token seen
    frequency_penalty: float = 0.0  # in [-2, 2]; subtracted once per occurrence in the output
    seed: int | None = None  # per-request generator seed in [0, 2**63); None = nondeterministic
    max_tokens: int = 16  # completion tokens at most; >= 1
    min_tokens: int = 0  # EOS and stop_token_ids are masked until this many are generated
    stop: tuple[str, ...] = ()  # stop strings (the detokenizer matches them); at most 16
    stop_token_ids: tuple[int, ...] = ()  # extra ids that end the request
    ignore_eos: bool = False  # keep generating past the model's EOS token
    logprobs: int = 0  # top alternatives returned per generated token, 0..20
    logit_bias: tuple[tuple[int, float], ...] = field(default=())  # (token id, bias in [-100, 100])
    adaptive_temperature: bool = False  # entropy-based sharpening (arXiv 2410.01104)

    def __post_init__(self) -> None:
        _check_real("temperature", self.temperature, 0.0, math.inf, upper_open=True)
        _check_int("top_k", self.top_k, 0)
        _check_real("top_p", self.top_p, 0.0, 1.0, lower_open=True)
        _check_real("min_p", self.min_p, 0.0, 1.0)
        # NOTE: bounded so a penalized logit stays finite (a subnormal divisor made it inf, and
        # inf - inf = NaN broke sampling); 0.01..100 spans every useful setting.
        _check_real("repetition_penalty", self.repetition_penalty, MIN_REPETITION_PENALTY,
                    MAX_REPETITION_PENALTY)
        _check_real("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_real("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("max_tokens", self.max_tokens, 1)
        _check_int("min_tokens", self.min_tokens, 0)
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be <= max_tokens ({self.max_tokens}), "
                             f"got {self.min_tokens}")
        object.__setattr__(self, "stop", _stop_strings(self.stop))
        stop_ids = tuple(self.stop_token_ids)
        for t in stop_ids:
            _check_int("stop_token_ids", t, 0)
        object.__setattr__(self, "stop_token_ids", stop_ids)
        _check_bool("ignore_eos", self.ignore_eos)
        _check_int("logprobs", self.logprobs, 0, MAX_LOGPROBS)
        object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias))
        _check_bool("adaptive_temperature", self.adaptive_temperature)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)


def _check_real(name: str, value: object, lo: float, hi: float, *,
                lower_open: bool = False, upper_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    above = value > lo if lower_open else value >= lo
    below = value < hi if upper_open else value <= hi
    if not (above and below):  # also rejects NaN
        interval = f"{'(' if lower_open else '['}{lo:g}, {hi:g}{')' if upper_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def _stop_strings(stop: object) -> tuple[str, ...]:
    """A bare string is one stop string; otherwise an iterable of non-empty strings."""
    strings = (stop,) if isinstance(stop, str) else tuple(stop)  # type: ignore[arg-type]
    if len(strings) > MAX_STOP_STRINGS:
        raise ValueError(f"stop must hold at most {MAX_STOP_STRINGS} strings, got {len(strings)}")
    for s in strings:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop must hold non-empty strings, got {s!r}")
    return strings


def _logit_bias(bias: Mapping[int, float] | Iterable[tuple[int, float]]) -> tuple[tuple[int, float], ...]:
    """A mapping or (id, bias) pairs -> pairs sorted by id, so the dataclass stays hashable."""
    pairs = list(bias.items()) if isinstance(bias, Mapping) else [tuple(p) for p in bias]
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"logit_bias entries must be (token id, bias) pairs, got {pair!r}")
        _check_int("logit_bias token id", pair[0], 0)
        _check_real("logit_bias value", pair[1], -MAX_ABS_LOGIT_BIAS, MAX_ABS_LOGIT_BIAS)
    ids = [t for t, _ in pairs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"logit_bias token ids must be distinct, got {sorted(ids)}")
    return tuple(sorted((t, float(b)) for t, b in pairs))
