"""Special tokens of a GGUF vocabulary: which ones split the text, and which ones end generation.

Both follow llama.cpp (src/llama-vocab.cpp), because our token ids must equal its ids:

- Before any BPE/SentencePiece work, llama.cpp cuts the text at every occurrence of a control,
  user-defined or unknown token, longest token first, and emits those tokens whole. Gemma's
  user-defined tokens include runs of spaces, tabs and newlines, so this step shapes ordinary
  text too, not only chat markup.
- End of generation: the declared EOS/EOT/EOM ids plus tokens recognised by their text
  ("<end_of_turn>", "<|im_end|>", ...), since most files do not declare an EOT id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from gguf import TokenType

# Token types that llama.cpp matches whole in the text (with parse_special, as for prompts).
SPLITTING_TYPES = frozenset({TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN})

# Texts llama.cpp treats as end of generation (its special_eog_ids heuristic in the llama.cpp of
# llama-cpp-python 0.3.36): end-of-turn markers, then the FIM pad/repo/separator markers it adds.
END_OF_GENERATION_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]",
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>",
    "<|file_sep|>",
})


def promote_marker_tokens(token_ids: Mapping[str, int], token_types: Sequence[int]) -> list[int]:
    """Token types after llama.cpp's fix-up: a NORMAL token spelled like an end-of-generation
    marker becomes CONTROL (llama.cpp warns "probably a bug in the model"), and so is split off
    whole like any control token."""
    types = list(token_types)
    for text in END_OF_GENERATION_TEXTS:
        i = token_ids.get(text)
        if i is not None and types[i] == TokenType.NORMAL:
            types[i] = TokenType.CONTROL
    return types


def end_of_generation_ids(token_ids: Mapping[str, int], token_types: Sequence[int],
                          declared_ids: Iterable[int | None]) -> frozenset[int]:
    """Ids that end a generation: `declared_ids` (EOS, EOT, EOM) plus the tokens named above.

    NOTE: one deliberate difference from llama.cpp: a token the file marks USER_DEFINED is
    never recognised by its text. Gemma 3 has "</s>" as a user-defined HTML tag (strikethrough);
    llama.cpp would stop generation there, we let the model write it.
    """
    ids = {i for i in declared_ids if i is not None and 0 <= i < len(token_types)}
    for text in END_OF_GENERATION_TEXTS:
        i = token_ids.get(text)
        if i is not None and token_types[i] != TokenType.USER_DEFINED:
            ids.add(i)
    return frozenset(ids)


class SpecialTokenSplitter:
    """Cuts text into plain-text fragments and whole special tokens, exactly as llama.cpp does.

    llama.cpp takes the special tokens longest first (by UTF-8 length) and splits every
    remaining text fragment at each left-to-right occurrence of the current one. Only tokens
    that occur in the text can matter, so a trie walk first finds those, and the llama.cpp loop
    then runs over that handful instead of all of Gemma's 6,400 specials.
    """

    def __init__(self, specials: Mapping[str, int]) -> None:
        self._ids = dict(specials)
        self._trie: dict[str, dict] = {}
        for text in specials:
            if not text:
                raise ValueError("a special token has empty text")
            node = self._trie
            for ch in text:
                node = node.setdefault(ch, {})
            node[""] = text  # "" marks the end of a token; no token text is empty
        # Ties (equal byte length) are ordered by id; llama.cpp's std::sort leaves them unspecified.
        self._rank = {text: (-len(text.encode("utf-8")), token_id) for text, token_id in specials.items()}

    def __len__(self) -> int:
        return len(self._ids)

    def split(self, text: str) -> list[str | int]:
        """Fragments in order: a str for text still to tokenize, an int for a special token id."""
        present = self._present(text)
        if not present:
            return [text] if text else []
        fragments: list[str | int] = [text]
        for special in sorted(present, key=self._rank.__getitem__):
            token_id = self._ids[special]
            next_fragments: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int) or special not in fragment:
                    next_fragments.append(fragment)
                    continue
                pieces = fragment.split(special)
                for j, piece in enumerate(pieces):
                    if j:
                        next_fragments.append(token_id)
                    if piece:
                        next_fragments.append(piece)
            fragments = next_fragments
        return fragments

    def _present(self, text: str) -> set[str]:
        """Every special token that occurs somewhere in `text`."""
        found: set[str] = set()
        root = self._trie
        for start, ch in enumerate(text):
            node = root.get(ch)
            pos = start + 1
            while node is not None:
                end = node.get("")
                if end is not None:
                    found.add(end)
                if pos == len(text):
                    break
                node = node.get(text[pos])
                pos += 1
        return found
