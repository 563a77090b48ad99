"""`routegate quantize <HF checkpoint dir>`: a real safetensors checkpoint to a Q4_K_M GGUF.

The checkpoint is SmolLM2-135M as transformers reads it from the bundled GGUF, saved once per
module as config.json + model.safetensors + tokenizer files. The quantized file must carry the
bundled file's hyperparameters and tokenizer, tokenize like llama.cpp, generate the same greedy
tokens in llama.cpp and in our k-quant engine, and score text about as well as the bundled file.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from backends.checkpoint import GGUFCheckpoint, SafetensorsCheckpoint
from backends.engine_config import EngineConfig
from backends.gguf_file import GGUFFile
from backends.hf_to_gguf import write_unquantized_gguf
from backends.loader import load_engine, resolve_model_path
from backends.perplexity import perplexity
from backends.sampling_params import SamplingParams
from gateway.cli import app
from backends.llama_cpp_reference import load_llama_cpp
from tests.test_quantize_cli import PROMPT, llama_cpp_greedy

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = "In 2024, 12345 visitors saw the Eiffel Tower: ünïcödé, tabs\tand <|im_end|> too."
# SmolLM2's published tokenizer.json splits every digit; transformers' GGUF -> HF conversion
# writes plain GPT-2 byte-level splitting instead, so the fixture restores the original.
SMOLLM2_PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}


def save_hf_checkpoint(gguf_path: str, folder) -> None:
    """The model and tokenizer of `gguf_path` as a HF checkpoint directory (float32 safetensors)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source_dir, name = os.path.split(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=name, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=name)
    config = model.config
    config.architectures = [type(model).__name__]
    if hasattr(config, "quantization_config"):  # transformers marks GGUF-loaded models quantized
        del config.quantization_config
    config.save_pretrained(folder)
    # NOTE: save_pretrained refuses a GGUF-loaded model; safetensors refuses the tied lm_head alias.
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()
               if not (config.tie_word_embeddings and k == "lm_head.weight")}
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)
    spec_path = os.path.join(folder, "tokenizer.json")
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    spec["pre_tokenizer"] = SMOLLM2_PRE_TOKENIZER
    with open(spec_path, "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smollm2-hf")
    save_hf_checkpoint(resolve_model_path("bundled:smollm2-135m"), folder)
    return folder


def quantize(source, out):
    result = CliRunner().invoke(app, ["quantize", str(source), str(out), "--type", "Q4_K_M"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    return out


@pytest.fixture(scope="module")
def quantized(hf_dir, tmp_path_factory):
    return quantize(hf_dir, tmp_path_factory.mktemp("quantized") / "smollm2-q4_k_m.gguf")


def test_q_and_k_rows_round_trip_through_llama_cpp_order(hf_dir, tmp_path):
    write_unquantized_gguf(str(hf_dir), str(tmp_path / "f32.gguf"))
    hf, gguf = SafetensorsCheckpoint(str(hf_dir)), GGUFCheckpoint(str(tmp_path / "f32.gguf"))
    stored = GGUFFile(str(tmp_path / "f32.gguf")).tensors["blk.0.attn_q.weight"].data
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.29.attn_k.weight", "token_embd.weight"):
        assert torch.equal(gguf.dense(name), hf.dense(name)), name
    # stored in llama.cpp's order: head 0's row 1 is HF's row 32 (the second half's first)
    assert torch.equal(torch.from_numpy(stored[1].copy()), hf.dense("blk.0.attn_q.weight")[32])


def test_metadata_equals_the_bundled_files(quantized):
    written, bundled = GGUFFile(quantized), GGUFFile(resolve_model_path("bundled:smollm2-135m"))
    # add_space_prefix is a SentencePiece flag that llama.cpp ignores for "gpt2" vocabularies
    keys = [k for k in bundled.metadata if k.startswith(("llama.", "tokenizer."))
            and k != "tokenizer.ggml.add_space_prefix"]
    assert {k: written.metadata.get(k) for k in keys} == {k: bundled.metadata[k] for k in keys}
    assert written.metadata["general.architecture"] == "llama"
    assert written.metadata["general.file_type"] == 15  # MOSTLY_Q4_K_M
    assert "output.weight" not in written.tensors  # tied to token_embd, as in the checkpoint


def test_tensors_equal_quantizing_the_bundled_gguf_itself(quantized, tmp_path):
    # The checkpoint holds the bundled file's weights dequantized, so both paths start from the
    # same float32 values in the same (llama.cpp) row order and must write the same bytes.
    direct = GGUFFile(quantize(resolve_model_path("bundled:smollm2-135m"), tmp_path / "direct.gguf"))
    written = GGUFFile(quantized)
    assert sorted(written.tensors) == sorted(direct.tensors)
    for name, tensor in written.tensors.items():
        assert tensor.ggml_type == direct.tensors[name].ggml_type, name
        assert np.array_equal(tensor.data, direct.tensors[name].data), name


def test_llama_cpp_tokenizes_and_generates_like_our_engine(quantized):
    llm = load_llama_cpp(quantized, n_ctx=128, n_threads=2)
    engine = load_engine(EngineConfig(name="converted", model=str(quantized), engine="kquant", max_model_len=128),
                         kv_cache_bytes=16 << 20)
    assert engine.tokenizer.encode(TEXT) == llm.tokenize(TEXT.encode(), add_bos=False, special=True)
    prompt_ids = engine.tokenizer.encode(PROMPT)
    theirs = llama_cpp_greedy(llm, prompt_ids, 16)
    mine = engine.generate(prompt_ids, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    assert mine == theirs
    assert llm.detokenize(theirs).decode().startswith(" Paris.")


def test_perplexity_is_close_to_the_bundled_files(quantized):
    text = open(os.path.join(HERE, "fixtures", "perplexity_text.txt"), encoding="utf-8").read()
    results = {}
    for name, model in (("bundled", "bundled:smollm2-135m"), ("converted", str(quantized))):
        engine = load_engine(EngineConfig(name=name, model=model, engine="kquant", max_model_len=512),
                             kv_cache_bytes=64 << 20)
        results[name] = perplexity(engine, engine.tokenizer.encode(text)[:1024], 512).perplexity
    # Measured: 26.22 -> 27.22 (+3.8%), what Q4_K_M re-encoding the bundled Q4_1 weights costs
    # a 135M model; a wrong Q/K order or tokenizer costs far more than that.
    assert abs(results["converted"] / results["bundled"] - 1) < 0.05, results


def test_unsupported_architectures_are_refused_by_name(tmp_path):
    folder = tmp_path / "gemma"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["Gemma3ForCausalLM"]}))
    result = CliRunner().invoke(app, ["quantize", str(folder), str(tmp_path / "out.gguf"), "--type", "Q4_K_M"])
    assert result.exit_code == 2
    assert ("converting ['Gemma3ForCausalLM'] to GGUF is not supported; supported: LlamaForCausalLM, "
            "MistralForCausalLM, Qwen2ForCausalLM") in " ".join(result.output.split())
    assert not (tmp_path / "out.gguf").exists()
