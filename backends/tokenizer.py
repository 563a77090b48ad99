"""Text <-> token ids for a model, built from GGUF metadata (or a HF tokenizer.json directory).

For a GGUF the ids equal llama.cpp's for the same text (tests/test_tokenizer.py checks this
against a llama.cpp fixture), because the engine must see the token sequences llama.cpp would
feed the same weights. The pipeline mirrors llama.cpp's llama_vocab::tokenize:

    text --SpecialTokenSplitter--> fragments / special ids --Spm|BpeTokenizer--> ids (+BOS/EOS)

Special tokens are always parsed (llama.cpp's parse_special=True): "<|im_start|>" in the text
becomes its id. That is what a rendered chat template needs; callers must not pass untrusted
text that should stay literal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from gguf import TokenType

from backends.bpe_tokenizer import BpeTokenizer, byte_level_piece
from backends.chat_template import ChatTemplate
from backends.hf_tokenizer_dir import HFTokenizerDir
from backends.special_tokens import (SPLITTING_TYPES, SpecialTokenSplitter, end_of_generation_ids,
                                     promote_marker_tokens)
from backends.spm_tokenizer import SPACE, SpmTokenizer, byte_token_value

_K = "tokenizer.ggml."
# Tokens whose text llama.cpp renders only when asked for specials, and which decode drops with
# skip_special=True.
_HIDDEN_TYPES = frozenset({TokenType.CONTROL, TokenType.UNKNOWN})


class Tokenizer:
    """A model's tokenizer: encode, decode, per-token bytes, end-of-generation ids, chat template.

    Build it with `from_gguf_metadata`, `from_gguf` or `from_pretrained_dir`. Thread-safe.
    """

    def __init__(self, *, encode_fn: Callable[[str, bool], list[int]], pieces: Sequence[bytes],
                 hidden_ids: frozenset[int], bos_token_id: int | None, eos_token_id: int | None,
                 eos_token_ids: frozenset[int], bos_token: str | None, eos_token: str | None,
                 chat_template: str | None) -> None:
        self._encode_fn = encode_fn
        self._pieces = pieces  # pieces[id]: the bytes token `id` stands for
        self._hidden_ids = hidden_ids  # control/unknown ids, dropped by decode(skip_special=True)
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.eos_token_ids = eos_token_ids  # every id that ends generation (EOS, EOT, ...)
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.chat_template = chat_template
        self._template = ChatTemplate(chat_template) if chat_template is not None else None

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Reads only the metadata of a .gguf file (tensors stay unread)."""
        from backends.gguf_file import GGUFFile

        return cls.from_gguf_metadata(GGUFFile(path).metadata)

    @classmethod
    def from_gguf_metadata(cls, fields: Mapping[str, Any]) -> Tokenizer:
        """From GGUF key/values as plain Python values (e.g. GGUFFile.metadata)."""
        tokens = _required(fields, _K + "tokens")
        num_tokens = len(tokens)
        token_ids = {text: i for i, text in enumerate(tokens)}
        if len(token_ids) != num_tokens:
            raise ValueError("the vocabulary has duplicate tokens (llama.cpp rejects such files too)")
        types = fields.get(_K + "token_type")
        if types is not None and len(types) != num_tokens:
            raise ValueError(f"{num_tokens} tokens but {len(types)} token types")
        token_types = promote_marker_tokens(token_ids, [TokenType.NORMAL] * num_tokens if types is None else types)

        kind = fields.get(_K + "model")
        if kind == "llama":
            scores = fields.get(_K + "scores")
            model: SpmTokenizer | BpeTokenizer = SpmTokenizer(
                token_ids, [0.0] * num_tokens if scores is None else scores,
                add_space_prefix=bool(fields.get(_K + "add_space_prefix", True)))
            add_bos_default, bos_default, eos_default = True, 1, 2  # llama.cpp's SPM defaults
            piece: Callable[[str, int], bytes] = _spm_piece
        elif kind == "gpt2":
            model = BpeTokenizer(token_ids, _required(fields, _K + "merges"), pre=str(fields.get(_K + "pre", "default")))
            add_bos_default, bos_default, eos_default = model.add_bos_default, None, None
            piece = _bpe_piece
        else:
            raise ValueError(f"unsupported tokenizer model {kind!r} (tokenizer.ggml.model); supported: 'llama', 'gpt2'")

        splitter = SpecialTokenSplitter({tokens[i]: i for i, t in enumerate(token_types) if t in SPLITTING_TYPES})
        bos_id = _token_id(fields, "bos_token_id", bos_default, num_tokens)
        eos_id = _token_id(fields, "eos_token_id", eos_default, num_tokens)
        add_bos = bool(fields.get(_K + "add_bos_token", add_bos_default))
        add_eos = bool(fields.get(_K + "add_eos_token", False))
        if add_bos and bos_id is None:
            raise ValueError("the file asks to add BOS but names no BOS token")
        if add_eos and eos_id is None:
            raise ValueError("the file asks to add EOS but names no EOS token")

        def encode_fn(text: str, add_special: bool) -> list[int]:
            ids = [bos_id] if add_special and add_bos else []
            after_special = True  # SPM prefixes a space to text at the start or after a special
            for fragment in splitter.split(text):
                if isinstance(fragment, int):
                    ids.append(fragment)
                    after_special = True
                else:
                    ids.extend(model.encode(fragment, prefix_space=after_special))
                    after_special = False
            if add_special and add_eos:
                ids.append(eos_id)
            return ids

        declared = [eos_id, *(_token_id(fields, k, None, num_tokens) for k in (
            "eot_token_id", "eom_token_id", "fim_pad_token_id", "fim_rep_token_id", "fim_sep_token_id"))]
        return cls(
            encode_fn=encode_fn,
            pieces=_LazyPieces(tokens, token_types, piece),
            hidden_ids=frozenset(i for i, t in enumerate(token_types) if t in _HIDDEN_TYPES),
            bos_token_id=bos_id, eos_token_id=eos_id,
            eos_token_ids=end_of_generation_ids(token_ids, token_types, declared),
            bos_token=tokens[bos_id] if bos_id is not None else None,
            eos_token=tokens[eos_id] if eos_id is not None else None,
            chat_template=fields.get("tokenizer.chat_template"),
        )

    @classmethod
    def from_pretrained_dir(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """From a Hugging Face checkpoint directory (tokenizer.json, tokenizer_config.json).

        Encoding is HF's own (the `tokenizers` library with the directory's added tokens and
        post-processor), the reference for such checkpoints.
        """
        hf = HFTokenizerDir(os.fspath(path))
        return cls(
            encode_fn=hf.encode, pieces=hf.pieces, hidden_ids=hf.special_ids,
            bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id,
            eos_token_ids=end_of_generation_ids(hf.token_ids, hf.token_types, [hf.eos_token_id, *hf.extra_eos_ids]),
            bos_token=hf.bos_token, eos_token=hf.eos_token, chat_template=hf.chat_template,
        )

    # -- use ---------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of `text`; `add_special` adds BOS/EOS where the model asks for them."""
        if not isinstance(text, str):
            raise ValueError(f"encode takes a str, got {type(text).__name__}")
        return self._encode_fn(text, add_special)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """The text of `ids`; bytes that do not form UTF-8 become U+FFFD."""
        ids = list(ids)
        if skip_special:
            ids = [i for i in ids if i not in self._hidden_ids]
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for; may be part of a UTF-8 character (<0xF0>).

        Control tokens give their text ("<|im_end|>"); filter ids first to hide them.
        """
        if not 0 <= token_id < len(self._pieces):
            raise ValueError(f"token id {token_id} out of range [0, {len(self._pieces)})")
        return self._pieces[token_id]

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            **variables: Any) -> str:
        """The prompt text for a conversation, rendered with the model's chat template."""
        if self._template is None:
            raise ValueError("this model has no chat template (tokenizer.chat_template); "
                             "it is likely a base model: send a plain prompt instead")
        variables.setdefault("bos_token", self.bos_token or "")
        variables.setdefault("eos_token", self.eos_token or "")
        return self._template.render(messages, add_generation_prompt=add_generation_prompt, **variables)


class _LazyPieces(Sequence[bytes]):
    """Token bytes computed on first use: building all 262k of Gemma's up front costs 0.5 s."""

    def __init__(self, tokens: Sequence[str], token_types: Sequence[int], piece: Callable[[str, int], bytes]) -> None:
        self._tokens = tokens
        self._types = token_types
        self._piece = piece
        self._cache: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._tokens)

    def __getitem__(self, token_id: int) -> bytes:  # type: ignore[override]
        cached = self._cache.get(token_id)
        if cached is None:
            cached = self._cache[token_id] = self._piece(self._tokens[token_id], self._types[token_id])
        return cached


def _spm_piece(text: str, token_type: int) -> bytes:
    if token_type == TokenType.NORMAL:
        return text.replace(SPACE, " ").encode("utf-8")
    if token_type == TokenType.BYTE:
        byte = byte_token_value(text)
        if byte is None:
            raise ValueError(f"byte token {text!r} is not spelled <0xAB>")
        return bytes([byte])
    return _special_piece(text, token_type)


def _bpe_piece(text: str, token_type: int) -> bytes:
    if token_type == TokenType.NORMAL:
        return byte_level_piece(text)
    return _special_piece(text, token_type)


def _special_piece(text: str, token_type: int) -> bytes:
    # As llama.cpp's token_to_piece(special=True): control, unknown and user-defined tokens read
    # as their text; unused and undefined ones as nothing.
    if token_type in (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.USER_DEFINED):
        return text.encode("utf-8")
    return b""


def _required(fields: Mapping[str, Any], key: str) -> Any:
    value = fields.get(key)
    if value is None or (isinstance(value, (list, tuple)) and not value):
        raise ValueError(f"GGUF metadata has no {key!r}; cannot build the tokenizer")
    return value


def _token_id(fields: Mapping[str, Any], key: str, default: int | None, num_tokens: int) -> int | None:
    value = fields.get(_K + key, default)
    if value is None:
        return None
    value = int(value)
    if 0 <= value < num_tokens:
        return value
    # llama.cpp ignores an out-of-range id (with a warning) rather than failing.
    return default if default is not None and 0 <= default < num_tokens else None
