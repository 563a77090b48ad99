"""Incremental detokenization for streaming: text deltas that never split a UTF-8 character.

A byte-level BPE token (or a SentencePiece byte-fallback token such as <0xF0>) can carry part of
a multi-byte character; the rest arrives with the next tokens. Decoding each chunk on its own
would emit U+FFFD in the middle of an emoji, so the bytes of an incomplete character are held
back until the tokens that complete it arrive.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import Protocol


class _TokenBytes(Protocol):
    def token_bytes(self, token_id: int) -> bytes: ...


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas, one request at a time.

    ``add`` returns the text completed by the new tokens; an incomplete trailing character is
    kept until a later ``add`` completes it, or ``flush`` gives it up (as U+FFFD) at the end of
    the request. Bytes that can never start or continue a character become U+FFFD at once.
    ``skip_token_ids`` (typically EOS) contribute no text.
    """

    def __init__(self, tokenizer: _TokenBytes, skip_token_ids: Iterable[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._skip_token_ids = frozenset(skip_token_ids)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_ids: Iterable[int]) -> str:
        data = b"".join(
            self._tokenizer.token_bytes(t) for t in token_ids if t not in self._skip_token_ids
        )
        return self._decoder.decode(data, final=False)

    def flush(self) -> str:
        """The held-back bytes of an incomplete character, as U+FFFD; empty when none."""
        return self._decoder.decode(b"", final=True)
