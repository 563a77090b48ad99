"""The `tokenizer.*` keys of a GGUF file, built from a Hugging Face tokenizer directory.

    add_vocab(writer, HFTokenizerDir(folder), folder, vocab_size=49152)

Only byte-level BPE vocabularies (GPT-2 style, tokenizer.ggml.model "gpt2") are written: the
token texts, their types, the merges, and the pre-tokenizer name llama.cpp picks its split
regexes by. That name is read off the structure of tokenizer.json's pre_tokenizer (llama.cpp's
converter hashes the tokens of a probe text instead); a pre-tokenizer not recognised here is
refused, as llama.cpp refuses a name it does not know.
"""

from __future__ import annotations

import json
import os
from typing import Any

from gguf import GGUFWriter, TokenType

# NOTE: the directory's own JSON readers, so both modules read tokenizer_config.json alike.
from backends.hf_tokenizer_dir import HFTokenizerDir, _read_json, _token_text, _uses_byte_level

# HF's spellings of the split regexes of llama.cpp's "llama-bpe" and "qwen2" pre-tokenizers
# ((?i:...) is case-insensitive; backends/bpe_tokenizer.py spells the same classes out).
_HF_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_HF_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SUPPORTED_PRE_TOKENIZERS = ("gpt-2: ByteLevel", "smollm: Digits(individual) + ByteLevel",
                            "llama-bpe: Llama 3 Split + ByteLevel", "qwen2: Qwen2 Split + ByteLevel")


def gguf_pre_tokenizer(pre_tokenizer: dict[str, Any] | None) -> str:
    """llama.cpp's tokenizer.ggml.pre name for a tokenizer.json pre_tokenizer."""
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer and pre_tokenizer.get("type") == "Sequence" \
        else [pre_tokenizer] if pre_tokenizer else []
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # StarCoder's scheme: every digit alone, then GPT-2's regex
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex == _HF_LLAMA3_SPLIT:
            return "llama-bpe"
        if regex == _HF_QWEN2_SPLIT:
            return "qwen2"
    raise ValueError(f"tokenizer.json pre_tokenizer {json.dumps(pre_tokenizer)[:300]} is not one llama.cpp "
                     f"knows by name here; supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)}")


def add_vocab(writer: GGUFWriter, tokenizer: HFTokenizerDir, folder: str, vocab_size: int) -> None:
    """Add the tokenizer keys of `folder` (already read into `tokenizer`) to `writer`.

    The token list is padded to the model's `vocab_size` (embedding rows beyond the
    tokenizer's ids) with unused "[PAD<i>]" tokens, as llama.cpp's converter does.
    """
    spec = _read_json(os.path.join(folder, "tokenizer.json"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or not _uses_byte_level(spec.get("decoder")):
        raise ValueError(f"{folder}: only byte-level BPE tokenizers (GPT-2 style) can be converted; this one is "
                         f"{model.get('type')} with byte_fallback={model.get('byte_fallback')} (SentencePiece-style)")
    pre = gguf_pre_tokenizer(spec.get("pre_tokenizer"))
    num_tokens = len(tokenizer.tokens)
    if num_tokens > vocab_size:
        raise ValueError(f"{folder}: the tokenizer has {num_tokens} tokens, more than the model's vocab_size "
                         f"{vocab_size}")
    tokens = list(tokenizer.tokens) + [f"[PAD{i}]" for i in range(num_tokens, vocab_size)]
    types = [int(t) for t in tokenizer.token_types] + [int(TokenType.UNUSED)] * (vocab_size - num_tokens)
    # NOTE: a hole in the ids (an id no token text maps to) would be an empty token; llama.cpp
    # tolerates it as long as it is never produced.
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)

    config = _read_json(os.path.join(folder, "tokenizer_config.json"))
    ids = tokenizer.token_ids
    for role, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        text = _token_text(config.get(f"{role}_token"))
        if text is not None and text in ids:
            add(ids[text])
    writer.add_add_bos_token(_adds_bos(config, spec, tokenizer.bos_token))
    if isinstance(config.get("add_eos_token"), bool):
        writer.add_add_eos_token(config["add_eos_token"])
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _adds_bos(config: dict[str, Any], spec: dict[str, Any], bos_text: str | None) -> bool:
    """Whether encoding prepends BOS: the config's add_bos_token, else the post-processor's template."""
    flag = config.get("add_bos_token")
    if isinstance(flag, bool):
        return flag
    template = (spec.get("post_processor") or {}).get("single") or []
    first = template[0] if template else {}
    return bos_text is not None and (first.get("SpecialToken") or {}).get("id") == bos_text
