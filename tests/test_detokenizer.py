"""Incremental detokenization on the two bundled tokenizers: deltas join to decode(ids), and a
delta never ends inside a UTF-8 character."""

from __future__ import annotations

import json
import os

import pytest

from backends import bundled_models
from backends.detokenizer import IncrementalDetokenizer
from backends.gguf_file import GGUFFile
from backends.tokenizer import Tokenizer

FIXTURE = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "tokenizer_llama_cpp.json"),
                         encoding="utf-8"))
# Texts both vocabularies spell exactly, plus characters that need several byte tokens in both
# (Gemma spells U+A66E with byte-fallback tokens <0xEA><0x99><0xAE>).
TEXTS = {**FIXTURE["texts"], "split_characters": "ꙮ 𝄞 日本語のテキスト 🧑‍🚀"}
MODELS = ("gemma3-270m", "smollm2-135m")


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Tokenizer]:
    return {
        "gemma3-270m": Tokenizer.from_gguf_metadata(GGUFFile(bundled_models.gemma3_270m_gguf_path()).metadata),
        "smollm2-135m": Tokenizer.from_gguf_metadata(GGUFFile(bundled_models.smollm2_135m_gguf_path()).metadata),
    }


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("chunk_size", [1, 3])
def test_deltas_join_to_decode_and_never_split_a_character(tokenizers, model, chunk_size) -> None:
    tokenizer = tokenizers[model]
    num_partial_tokens = 0
    for name, text in TEXTS.items():
        ids = tokenizer.encode(text, add_special=False)
        detokenizer = IncrementalDetokenizer(tokenizer)
        deltas = [detokenizer.add(ids[i:i + chunk_size]) for i in range(0, len(ids), chunk_size)]
        assert detokenizer.flush() == "", name
        assert "".join(deltas) == tokenizer.decode(ids) == text, name
        assert all("\ufffd" not in d for d in deltas), name
        num_partial_tokens += sum(not _is_utf8(tokenizer.token_bytes(t)) for t in ids)
    assert num_partial_tokens >= 3  # the hold-back path was exercised


@pytest.mark.parametrize("model", MODELS)
def test_incomplete_character_is_held_then_given_up_on_flush(tokenizers, model) -> None:
    tokenizer = tokenizers[model]
    ids = tokenizer.encode("ꙮ", add_special=False)
    partial = [t for t in ids if not _is_utf8(tokenizer.token_bytes(t))]
    assert partial, "expected U+A66E to need several byte tokens"
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.add(partial[:1]) == ""
    assert detokenizer.flush() == "\ufffd"


@pytest.mark.parametrize("model", MODELS)
def test_skip_token_ids_add_no_text(tokenizers, model) -> None:
    tokenizer = tokenizers[model]
    ids = tokenizer.encode("Hello world", add_special=False)
    eos = tokenizer.eos_token_id
    detokenizer = IncrementalDetokenizer(tokenizer, skip_token_ids=[eos])
    assert detokenizer.add([*ids, eos]) == tokenizer.decode(ids)
    assert IncrementalDetokenizer(tokenizer).add([eos]) == tokenizer.token_bytes(eos).decode()
