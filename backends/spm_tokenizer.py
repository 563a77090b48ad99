"""SentencePiece-style tokenization of a GGUF `llama` vocabulary, as llama.cpp does it.

llama.cpp does not run SentencePiece; it rebuilds the BPE variant from the vocabulary alone
(llm_tokenizer_spm_session): start from single characters, repeatedly merge the adjacent pair
whose concatenation is a token with the highest score (ties: leftmost), and spell any character
that never became a token as byte tokens (<0xE2> <0x82> <0xAC>). This is a direct port, so the
ids match llama.cpp's by construction rather than by approximation.

Speed: the merge loop is plain Python, so text is cut into words first. A symbol can only
span a position holding "▁" (an escaped space) if some token has "▁" after its first character;
Gemma 3 has exactly one such token (">▁</"), so cuts are made at every "▁" that no occurrence
of such a token covers. Merges never cross a cut, and the leftmost tie-break is preserved within
a word, so per-word results (cached) equal the whole-text result.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Mapping, Sequence

SPACE = "\u2581"  # "▁", SentencePiece's visible space
MAX_CACHED_WORDS = 1 << 16
MAX_CACHED_WORD_CHARS = 64
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def byte_token_value(text: str) -> int | None:
    """The byte a byte-fallback token such as "<0xE2>" stands for; None for other tokens."""
    match = _BYTE_TOKEN.fullmatch(text)
    return int(match.group(1), 16) if match else None


class SpmTokenizer:
    """Encodes plain text (no special tokens) with llama.cpp's SPM algorithm."""

    def __init__(self, token_ids: Mapping[str, int], scores: Sequence[float], add_space_prefix: bool) -> None:
        if len(scores) != len(token_ids):
            raise ValueError(f"{len(token_ids)} tokens but {len(scores)} scores")
        self.add_space_prefix = add_space_prefix
        self._ids = token_ids
        self._scores = [float(s) for s in scores]
        # llama.cpp's byte_to_token: the <0xAB> token, else the one-byte text token.
        self._byte_ids: list[int | None] = [
            self._ids.get(f"<0x{b:02X}>", self._ids.get(chr(b)) if b < 0x80 else None) for b in range(256)
        ]
        # Tokens that can join across an escaped space, with the offsets of their inner "▁".
        self._bridging = [(text, [k for k, ch in enumerate(text) if ch == SPACE and k > 0])
                          for text in token_ids if SPACE in text[1:]]
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str, prefix_space: bool = False) -> list[int]:
        """Ids of one plain-text fragment; `prefix_space` at the start of the text or after a special."""
        if self.add_space_prefix and prefix_space:
            text = " " + text
        text = text.replace(" ", SPACE)
        ids: list[int] = []
        for word in self._words(text):
            cached = self._cache.get(word)
            if cached is None:
                cached = self._encode_word(word)
                if len(word) <= MAX_CACHED_WORD_CHARS:
                    if len(self._cache) >= MAX_CACHED_WORDS:
                        self._cache.clear()
                    self._cache[word] = cached
            ids.extend(cached)
        return ids

    def _words(self, text: str) -> list[str]:
        cuts = [i for i, ch in enumerate(text) if ch == SPACE and i > 0]
        if not cuts:
            return [text] if text else []
        blocked: set[int] = set()
        for token, offsets in self._bridging:
            start = text.find(token)
            while start != -1:
                blocked.update(start + k for k in offsets)
                start = text.find(token, start + 1)
        bounds = [0, *(c for c in cuts if c not in blocked), len(text)]
        return [text[a:b] for a, b in zip(bounds, bounds[1:])]

    def _encode_word(self, word: str) -> list[int]:
        ids, scores = self._ids, self._scores
        n = len(word)
        if n == 0:
            return []
        length = [1] * n  # characters in the symbol starting here; 0 once merged into its left
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        # Heap of (-score, left, right, size): best score first, then leftmost, as llama.cpp.
        heap: list[tuple[float, int, int, int]] = []

        def try_add(left: int, right: int) -> None:
            if left == -1 or right == -1:
                return
            size = length[left] + length[right]
            token_id = ids.get(word[left:left + size])
            if token_id is not None:
                heapq.heappush(heap, (-scores[token_id], left, right, size))

        for i in range(1, n):
            token_id = ids.get(word[i - 1:i + 1])
            if token_id is not None:
                heap.append((-scores[token_id], i - 1, i, 2))
        heapq.heapify(heap)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            # Stale pair: one side was merged away, or grew, since it was queued.
            if length[left] == 0 or length[right] == 0 or length[left] + length[right] != size:
                continue
            length[left] = size
            length[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] != -1:
                prev[nxt[right]] = left
            try_add(prev[left], left)
            try_add(left, nxt[left])
        out: list[int] = []
        i = 0
        while i != -1:
            piece = word[i:i + length[i]]
            token_id = ids.get(piece)
            if token_id is not None:
                out.append(token_id)
            else:
                out.extend(self._byte_id(b) for b in piece.encode("utf-8"))
            i = nxt[i]
        return out

    def _byte_id(self, byte: int) -> int:
        token_id = self._byte_ids[byte]
        if token_id is None:
            raise ValueError(f"the vocabulary has no byte-fallback token for 0x{byte:02X}")
        return token_id
