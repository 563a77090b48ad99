"""The tokenizer files of a Hugging Face checkpoint directory, read with the `tokenizers` library.

tokenizer.json holds the vocabulary, merges, normalizer, pre-tokenizer, added tokens and the
post-processor that adds BOS/EOS; tokenizer_config.json names the BOS/EOS tokens and usually
holds the chat template (newer checkpoints keep it in chat_template.jinja instead);
generation_config.json may list more end-of-generation ids.
"""

from __future__ import annotations

import json
import os
from typing import Any

from gguf import TokenType
from tokenizers import Tokenizer as RustTokenizer

from backends.bpe_tokenizer import byte_level_piece
from backends.spm_tokenizer import SPACE, byte_token_value


class HFTokenizerDir:
    """What `Tokenizer.from_pretrained_dir` needs from one directory."""

    def __init__(self, path: str) -> None:
        tokenizer_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tokenizer_file):
            raise FileNotFoundError(f"{path}: no tokenizer.json (a tokenizer_config.json alone is not supported)")
        self._rust = RustTokenizer.from_file(tokenizer_file)
        spec = _read_json(tokenizer_file)
        config = _read_json(os.path.join(path, "tokenizer_config.json"))
        generation = _read_json(os.path.join(path, "generation_config.json"))

        vocab = self._rust.get_vocab(with_added_tokens=True)
        self.token_ids = vocab
        num_tokens = max(vocab.values()) + 1
        self.tokens = [""] * num_tokens
        for text, token_id in vocab.items():
            self.tokens[token_id] = text
        added = self._rust.get_added_tokens_decoder()
        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        self.token_types = [TokenType.CONTROL if i in self.special_ids
                            else TokenType.USER_DEFINED if i in added else TokenType.NORMAL
                            for i in range(num_tokens)]
        byte_level = _uses_byte_level(spec.get("decoder"))
        self.pieces = [text.encode("utf-8") if i in added
                       else byte_level_piece(text) if byte_level else _sentencepiece_piece(text)
                       for i, text in enumerate(self.tokens)]

        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.bos_token_id = vocab.get(self.bos_token) if self.bos_token else None
        self.eos_token_id = vocab.get(self.eos_token) if self.eos_token else None
        eos = generation.get("eos_token_id")
        self.extra_eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.chat_template = _chat_template(path, config)

    def encode(self, text: str, add_special: bool) -> list[int]:
        return self._rust.encode(text, add_special_tokens=add_special).ids


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        value = json.load(f)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return value


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json spells a token either as its text or as an AddedToken dict.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(path: str, config: dict[str, Any]) -> str | None:
    jinja_file = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            return f.read()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _uses_byte_level(decoder: dict[str, Any] | None) -> bool:
    if not decoder:
        return False
    if decoder.get("type") == "ByteLevel":
        return True
    return any(_uses_byte_level(d) for d in decoder.get("decoders") or [])


def _sentencepiece_piece(text: str) -> bytes:
    byte = byte_token_value(text)
    return bytes([byte]) if byte is not None else text.replace(SPACE, " ").encode("utf-8")
