"""One request's generated tokens as text: incremental detokenization, then stop strings."""

from __future__ import annotations

from collections.abc import Iterable

from backends.detokenizer import IncrementalDetokenizer
from backends.sampling_params import SamplingParams
from backends.stop_strings import StopStringMatcher


class TextStream:
    """Token ids in, text deltas out; the first stop string ends the text and is not emitted.

    EOS and the request's stop token ids produce no text. Stop strings are
    only honored once min_tokens tokens exist, as EOS and stop tokens are (the sampler masks those).
    """

    def __init__(self, tokenizer, params: SamplingParams) -> None:
        # Control tokens would render as their names ("<|im_end|>"), so EOS gives no text even
        # under ignore_eos.
        skip = set(params.stop_token_ids) | set(tokenizer.eos_token_ids)
        self._detokenizer = IncrementalDetokenizer(tokenizer, skip_token_ids=skip)
        self._stop = StopStringMatcher(params.stop)
        self._min_tokens = params.min_tokens
        self._num_tokens = 0

    def add(self, token_ids: Iterable[int]) -> tuple[str, str | None]:
        """(text safe to emit, the stop string that just ended the text or None)."""
        token_ids = tuple(token_ids)
        self._num_tokens += len(token_ids)
        text = self._detokenizer.add(token_ids)
        if self._num_tokens < self._min_tokens:
            return text, None  # NOTE: text before min_tokens can never hold a stop string
        before = self._stop.matched
        emitted = self._stop.add(text)
        return emitted, (self._stop.matched if before is None else None)

    def flush(self) -> str:
        """The rest at the end of the request: held stop-string prefix, an incomplete character."""
        return self._stop.add(self._detokenizer.flush()) + self._stop.flush()
