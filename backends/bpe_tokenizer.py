"""Byte-level BPE of a GGUF `gpt2` vocabulary, on HF's Rust `tokenizers`, matching llama.cpp.

llama.cpp's BPE session (llm_tokenizer_bpe_session) splits text with the regexes of the file's
pre-tokenizer type (`tokenizer.ggml.pre`), maps bytes to GPT-2's printable alphabet, and merges
the lowest-ranked pair first (ties: leftmost). `tokenizers.models.BPE` does the same merge loop,
so we give it the file's vocabulary and ranked merges plus llama.cpp's regexes verbatim, and
keep special tokens out of it: they are split off beforehand (special_tokens.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tokenizers import Regex
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, pre_tokenizers

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
           r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class PreTokenizer:
    """One llama.cpp pre-tokenizer type: regexes applied in turn, and its flags."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a word that is itself a token skips the merge loop
    add_bos: bool = False  # llama.cpp's default when the file has no add_bos_token key


_STARCODER = PreTokenizer((r"\p{N}", _GPT2))
_GPT2_PRE = PreTokenizer((_GPT2,))
_LLAMA3_PRE = PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)
_QWEN2_PRE = PreTokenizer((_QWEN2,))

# `tokenizer.ggml.pre` values, from llama.cpp's table. Only "smollm" is checked against
# llama.cpp in our tests (tests/test_tokenizer.py); the rest copy the same table.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "smollm": _STARCODER, "starcoder": _STARCODER, "refact": _STARCODER, "codeshell": _STARCODER,
    "gpt-2": _GPT2_PRE, "phi-2": _GPT2_PRE, "mpt": _GPT2_PRE, "olmo": _GPT2_PRE,
    "llama3": _LLAMA3_PRE, "llama-v3": _LLAMA3_PRE, "llama-bpe": _LLAMA3_PRE, "falcon3": _LLAMA3_PRE,
    "qwen2": _QWEN2_PRE, "deepseek-r1-qwen": _QWEN2_PRE,
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (printable Latin-1 bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


BYTE_DECODER = {ch: b for b, ch in bytes_to_unicode().items()}


def byte_level_piece(token: str) -> bytes:
    """The bytes a byte-level BPE token stands for ("Ġthe" -> b" the")."""
    try:
        return bytes(BYTE_DECODER[ch] for ch in token)
    except KeyError:
        # Not in the byte alphabet (a mislabelled special token): take the text as written.
        return token.encode("utf-8")


class BpeTokenizer:
    """Encodes plain text (no special tokens) with a byte-level BPE vocabulary."""

    def __init__(self, token_ids: Mapping[str, int], merges: Sequence[str], pre: str) -> None:
        if pre not in PRE_TOKENIZERS:
            raise ValueError(f"unsupported BPE pre-tokenizer {pre!r} (tokenizer.ggml.pre); "
                             f"supported: {sorted(PRE_TOKENIZERS)}")
        spec = PRE_TOKENIZERS[pre]
        self.add_bos_default = spec.add_bos
        vocab = dict(token_ids)
        pairs = [_split_merge(m) for m in merges]
        for left, right in pairs:
            # llama.cpp would merge such a pair and then spell the result as bytes; tokenizers
            # refuses the merge table. No file we know of has one.
            if left + right not in vocab:
                raise ValueError(f"merge {left!r} + {right!r} makes {left + right!r}, which is not a token")
        model = models.BPE(vocab=vocab, merges=pairs, ignore_merges=spec.ignore_merges)
        self._rust = RustTokenizer(model)
        self._rust.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in spec.regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])

    def encode(self, text: str, prefix_space: bool = False) -> list[int]:
        """Ids of one plain-text fragment (`prefix_space` is a SentencePiece notion, unused)."""
        return self._rust.encode(text, add_special_tokens=False).ids


def _split_merge(merge: str) -> tuple[str, str]:
    # As llama.cpp: the separator is the first space after the first character.
    pos = merge.find(" ", 1)
    if pos == -1:
        raise ValueError(f"malformed merge {merge!r}: expected two tokens separated by a space")
    return merge[:pos], merge[pos + 1:]
