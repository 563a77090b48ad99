"""Tokenizer built from GGUF metadata: ids equal llama.cpp's, bytes and text round-trip exactly.

The reference ids come from tests/fixtures/tokenizer_llama_cpp.json, written by llama.cpp
(llama-cpp-python) with tests/fixtures/make_tokenizer_fixture.py; llama_cpp is not needed here.
Each model's tokenizer is built once per module.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as RustTokenizer

from backends import bundled_models
from backends.chat_template import ChatTemplate
from backends.gguf_file import GGUFFile
from backends.tokenizer import Tokenizer

FIXTURE = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "tokenizer_llama_cpp.json"),
                         encoding="utf-8"))
TEXTS = FIXTURE["texts"]  # texts that both vocabularies can spell exactly
ALL_TEXTS = {**TEXTS, **FIXTURE["lossy_texts"]}  # plus characters SmolLM2 cannot spell
MODELS = ("gemma3-270m", "smollm2-135m")


@pytest.fixture(scope="module")
def smollm2_metadata():
    return GGUFFile(bundled_models.smollm2_135m_gguf_path()).metadata


@pytest.fixture(scope="module")
def tokenizers(smollm2_metadata):
    # Both constructors: from_gguf (reads the file) and from_gguf_metadata (the loader's path).
    return {
        "gemma3-270m": Tokenizer.from_gguf(bundled_models.gemma3_270m_gguf_path()),
        "smollm2-135m": Tokenizer.from_gguf_metadata(smollm2_metadata),
    }


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", sorted(ALL_TEXTS))
def test_ids_equal_llama_cpp(tokenizers, model, name):
    assert tokenizers[model].encode(ALL_TEXTS[name]) == FIXTURE["models"][model]["ids"][name]


@pytest.mark.parametrize("model", MODELS)
def test_ids_without_bos_equal_llama_cpp(tokenizers, model):
    reference = FIXTURE["models"][model]["ids_no_bos"]
    assert {name: tokenizers[model].encode(TEXTS[name], add_special=False) for name in reference} == reference


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", sorted(TEXTS))
def test_decode_inverts_encode(tokenizers, model, name):
    tok = tokenizers[model]
    ids = tok.encode(TEXTS[name], add_special=False)
    assert tok.decode(ids) == TEXTS[name]
    assert b"".join(tok.token_bytes(i) for i in ids) == TEXTS[name].encode("utf-8")


@pytest.mark.parametrize("model", MODELS)
def test_token_bytes_equal_llama_cpp_pieces(tokenizers, model):
    pieces = FIXTURE["models"][model]["pieces_hex"]
    assert {k: tokenizers[model].token_bytes(int(k)).hex() for k in pieces} == pieces


def test_gemma_special_ids(tokenizers):
    tok = tokenizers["gemma3-270m"]
    reference = FIXTURE["models"]["gemma3-270m"]
    assert (tok.vocab_size, tok.bos_token_id, tok.eos_token_id) == (262144, 2, 1) == (
        reference["vocab_size"], reference["bos_token_id"], reference["eos_token_id"])
    assert tok.eos_token_ids == frozenset({1, 106})  # <eos>, <end_of_turn>
    # llama.cpp also stops at 212, "</s>": in Gemma 3 a user-defined HTML tag, not an end marker.
    assert set(reference["eog_ids"]) - tok.eos_token_ids == {212}
    assert tok.decode([212]) == "</s>"
    assert (tok.bos_token, tok.eos_token, tok.chat_template) == ("<bos>", "<eos>", None)


def test_smollm2_special_ids(tokenizers):
    tok = tokenizers["smollm2-135m"]
    reference = FIXTURE["models"]["smollm2-135m"]
    assert (tok.vocab_size, tok.bos_token_id, tok.eos_token_id) == (49152, 1, 2) == (
        reference["vocab_size"], reference["bos_token_id"], reference["eos_token_id"])
    # <|endoftext|>, <|im_end|>, and <reponame>, which llama.cpp takes for a FIM repo marker.
    assert tok.eos_token_ids == frozenset(reference["eog_ids"]) == frozenset({0, 2, 4})
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")


def test_control_tokens_in_text_are_single_ids(tokenizers):
    smol, gemma = tokenizers["smollm2-135m"], tokenizers["gemma3-270m"]
    assert smol.encode("<|im_start|>user\nHi<|im_end|>\n") == [1, 4093, 198, 26843, 2, 198]
    assert gemma.encode("<start_of_turn>user\nHi<end_of_turn>\n") == [2, 105, 2364, 107, 10979, 106, 107]
    # Gemma's runs of spaces are user-defined tokens, split off like specials ("  " is 138).
    assert gemma.encode("a  b", add_special=False) == [236746, 138, 236763]


def test_skip_special_drops_control_tokens_only(tokenizers):
    smol, gemma = tokenizers["smollm2-135m"], tokenizers["gemma3-270m"]
    ids = smol.encode("<|im_start|>user\nHi<|im_end|>\n")
    assert smol.decode(ids) == "<|im_start|>user\nHi<|im_end|>\n"
    assert smol.decode(ids, skip_special=True) == "user\nHi\n"
    # User-defined tokens (an HTML tag, a run of spaces) are text, never skipped.
    assert gemma.decode(gemma.encode("<start_of_turn><b>x</b>  y"), skip_special=True) == "<b>x</b>  y"


def test_byte_fallback_spells_unknown_characters_as_bytes(tokenizers):
    gemma = tokenizers["gemma3-270m"]
    # U+10FFFD is not in the vocabulary: its UTF-8 bytes F4 8F BF BD as <0xF4>.. (<0x00> is id 238).
    ids = gemma.encode("\U0010fffd", add_special=False)
    assert ids == [238 + 0xF4, 238 + 0x8F, 238 + 0xBF, 238 + 0xBD]
    assert [gemma.token_bytes(i) for i in ids] == [b"\xf4", b"\x8f", b"\xbf", b"\xbd"]
    assert gemma.decode(ids[:2]) == "\ufffd"  # an incomplete character decodes as U+FFFD


def test_smollm2_drops_bytes_it_has_no_token_for(tokenizers):
    # Its byte-level vocabulary lacks 0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xF1 and 0xF2 (lead byte
    # of U+40000..U+BFFFF); llama.cpp drops such bytes (fixture "missing_bytes"), and so do we.
    tok = tokenizers["smollm2-135m"]
    ids = tok.encode("a\x04b\U00040000")  # U+40000 is F1 80 80 80; only the F1 has no token
    assert ids == [81, 82, 218, 218, 218]
    assert b"".join(tok.token_bytes(i) for i in ids) == b"ab\x80\x80\x80"


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581"), max_size=40))
def test_gemma_bytes_round_trip_on_any_text(tokenizers, text):
    # "▁" is excluded: SentencePiece writes spaces as "▁", so a literal one reads back as " ".
    tok = tokenizers["gemma3-270m"]
    assert b"".join(tok.token_bytes(i) for i in tok.encode(text, add_special=False)) == text.encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(max_codepoint=0x3FFFF, blacklist_categories=("Cs",),
                                  blacklist_characters="\x04\x06\x13\x14\x16\x1d"), max_size=40))
def test_smollm2_bytes_round_trip_on_spellable_text(tokenizers, text):
    tok = tokenizers["smollm2-135m"]
    assert b"".join(tok.token_bytes(i) for i in tok.encode(text, add_special=False)) == text.encode("utf-8")


def test_smollm2_chat_template_renders_chatml(tokenizers):
    tok = tokenizers["smollm2-135m"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    assert tok.apply_chat_template(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n")
    # Without a system message the template adds SmolLM2's default one.
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=False) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n")


def test_gemma_has_no_chat_template(tokenizers):
    with pytest.raises(ValueError, match="no chat template"):
        tokenizers["gemma3-270m"].apply_chat_template([{"role": "user", "content": "Hi"}])


def test_chat_template_helpers_and_sandbox():
    template = ChatTemplate(
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}"
        "{{ raise_exception('no tools here') }}{% endif %}{{ m.content | tojson }}\n{% endfor %}")
    assert template.render([{"role": "user", "content": "é<b>"}], bos_token="<s>") == '<s>"é<b>"\n'
    with pytest.raises(ValueError, match="no tools here"):
        template.render([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="unsafe"):
        ChatTemplate("{{ ''.__class__.__mro__ }}").render([])
    with pytest.raises(ValueError, match="does not compile"):
        ChatTemplate("{% for %}")
    with pytest.raises(ValueError, match="list of dicts"):
        template.render("hello")


def test_from_pretrained_dir_matches_llama_cpp(tmp_path, smollm2_metadata, tokenizers):
    # A checkpoint directory shaped like HuggingFaceTB/SmolLM2-135M-Instruct's: individual digits,
    # then GPT-2 byte-level BPE; the control tokens as special added tokens.
    tokens = smollm2_metadata["tokenizer.ggml.tokens"]
    types = smollm2_metadata["tokenizer.ggml.token_type"]
    rust = RustTokenizer(models.BPE({t: i for i, t in enumerate(tokens)},
                                    [tuple(m.split(" ")) for m in smollm2_metadata["tokenizer.ggml.merges"]]))
    rust.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False)])
    rust.decoder = decoders.ByteLevel()
    rust.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3])
    rust.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "chat_template": smollm2_metadata["tokenizer.chat_template"]}))

    tok = Tokenizer.from_pretrained_dir(tmp_path)
    reference = FIXTURE["models"]["smollm2-135m"]
    assert {name: tok.encode(text) for name, text in ALL_TEXTS.items()} == reference["ids"]
    assert {k: tok.token_bytes(int(k)).hex() for k in reference["pieces_hex"]} == reference["pieces_hex"]
    assert (tok.vocab_size, tok.bos_token_id, tok.eos_token_id, tok.eos_token_ids) == (
        49152, 1, 2, frozenset({0, 2, 4}))
    messages = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(messages) == tokenizers["smollm2-135m"].apply_chat_template(messages)


def test_sentencepiece_dir_token_bytes(tmp_path):
    # Byte-fallback and "▁" pieces in a SentencePiece-style tokenizer.json (no ByteLevel decoder).
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<0xE2>": 3, "\u2581hi": 4, "a": 5}
    rust = RustTokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    rust.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    rust.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    rust.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_pretrained_dir(tmp_path)
    assert [tok.token_bytes(i) for i in range(6)] == [b"<unk>", b"<s>", b"</s>", b"\xe2", b" hi", b"a"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.eos_token_ids, tok.chat_template) == (None, None, frozenset({2}), None)


def test_invalid_input_raises_value_error(tokenizers):
    tok = tokenizers["smollm2-135m"]
    with pytest.raises(ValueError, match="out of range"):
        tok.token_bytes(49152)
    with pytest.raises(ValueError, match="takes a str"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="unsupported tokenizer model 'bert'"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(ValueError, match="no 'tokenizer.ggml.tokens'"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "llama"})
    with pytest.raises(ValueError, match="unsupported BPE pre-tokenizer 'default'"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab"],
                                      "tokenizer.ggml.merges": ["a b"]})
