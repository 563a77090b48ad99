"""`routegate quantize`: the command end to end, importance matrices, and its error messages.

The output runs in llama.cpp (llama-cpp-python) and in our full-precision engine, which must
pick the same greedy tokens.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter
from typer.testing import CliRunner

from backends.bundled_models import smollm2_135m_gguf_path
from backends.gguf_file import GGUFFile
from backends.llama_cpp_reference import load_llama_cpp
from backends.quantization.quantizer_imatrix import load_imatrix
from gateway.cli import app

T = GGMLQuantizationType
PROMPT = "The capital of France is"


def llama_cpp_greedy(llm, prompt_ids: list[int], num_tokens: int) -> list[int]:
    tokens = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1):
        tokens.append(token)
        if len(tokens) == num_tokens:
            return tokens
    return tokens


def run_cli(*args: str):
    return CliRunner().invoke(app, ["quantize", *args])


def quantize_smollm2(out, type_name: str, *extra: str):
    result = run_cli(smollm2_135m_gguf_path(), str(out), "--type", type_name, *extra)
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def smollm2_q4_0(tmp_path_factory):
    return quantize_smollm2(tmp_path_factory.mktemp("cli") / "smollm2-q4_0.gguf", "q4_0")


@pytest.fixture(scope="module")
def smollm2_q8_0(tmp_path_factory):
    # Q8_0: re-quantizing the bundled Q4_1 weights to 4 bits again costs a 135M model its
    # answer ("capitalised as it is capital"); at 8 bits it still says Paris.
    return quantize_smollm2(tmp_path_factory.mktemp("cli") / "smollm2-q8_0.gguf", "Q8_0")


def test_cli_writes_a_q4_0_file_with_llama_cpp_types_and_metadata(smollm2_q4_0):
    out, output = smollm2_q4_0
    assert f"wrote {out}" in output and "210 tensors quantized, 62 copied" in output
    written, source = GGUFFile(out), GGUFFile(smollm2_135m_gguf_path())
    types = [t.ggml_type.name for t in written.tensors.values()]
    # token_embd is tied to the output: Q6_K, which 576-wide rows turn into Q8_0
    assert written.tensors["token_embd.weight"].ggml_type == T.Q8_0
    assert sorted(set(types)) == ["F32", "Q4_0", "Q8_0"] and types.count("Q4_0") == 210
    assert written.metadata["general.file_type"] == 2  # MOSTLY_Q4_0
    same_keys = {k: v for k, v in source.metadata.items() if k not in ("general.file_type",)}
    assert {k: written.metadata[k] for k in same_keys} == same_keys  # tokenizer and all


def test_llama_cpp_and_our_engine_generate_the_same_tokens(smollm2_q8_0):
    from backends.engine_config import EngineConfig
    from backends.loader import load_engine
    from backends.sampling_params import SamplingParams

    out, _ = smollm2_q8_0
    llm = load_llama_cpp(out, n_ctx=128, n_threads=2)
    theirs = llama_cpp_greedy(llm, llm.tokenize(PROMPT.encode(), add_bos=False), 6)
    assert "Paris" in llm.detokenize(theirs).decode()
    engine = load_engine(EngineConfig(name="q8_0", model=str(out), max_model_len=128), kv_cache_bytes=16 << 20)
    mine = engine.generate(engine.tokenizer.encode(PROMPT), SamplingParams(temperature=0.0, max_tokens=6,
                                                                           ignore_eos=True))
    assert mine == theirs


def write_legacy_imatrix(path, entries: dict[str, tuple[int, np.ndarray]]) -> None:
    """llama-imatrix's legacy .dat: count, then (name, ncall, values) per entry."""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name, (ncall, values) in entries.items():
            f.write(struct.pack("<i", len(name)) + name.encode())
            f.write(struct.pack("<ii", ncall, values.size) + values.astype("<f4").tobytes())


def test_imatrix_files_both_formats(tmp_path):
    values = np.arange(1, 577, dtype=np.float32)
    write_legacy_imatrix(tmp_path / "im.dat", {"blk.0.attn_q.weight": (4, values)})
    assert np.array_equal(load_imatrix(tmp_path / "im.dat")["blk.0.attn_q.weight"], values / 4)
    writer = GGUFWriter(str(tmp_path / "im.gguf"), "imatrix")
    writer.add_tensor("blk.0.attn_q.weight.in_sum2", values.reshape(1, 576))
    writer.add_tensor("blk.0.attn_q.weight.counts", np.array([[8.0]], np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert np.array_equal(load_imatrix(tmp_path / "im.gguf")["blk.0.attn_q.weight"], values / 8)
    (tmp_path / "bad.dat").write_bytes(b"\x01\x00\x00\x00\xff\xff\x00\x00")
    with pytest.raises(ValueError, match="not a readable imatrix file"):
        load_imatrix(tmp_path / "bad.dat")


def test_cli_with_imatrix_changes_only_the_tensors_it_covers(smollm2_q4_0, tmp_path):
    plain, _ = smollm2_q4_0
    rng = np.random.default_rng(0)
    covered = "blk.3.attn_q.weight"
    write_legacy_imatrix(tmp_path / "im.dat", {covered: (1, rng.random(576).astype(np.float32) + 0.01)})
    out = tmp_path / "guided.gguf"
    result = run_cli(smollm2_135m_gguf_path(), str(out), "--type", "Q4_0", "--imatrix", str(tmp_path / "im.dat"))
    assert result.exit_code == 0, result.output
    guided, plain = GGUFFile(out), GGUFFile(plain)
    changed = {n for n, t in guided.tensors.items()
               if t.ggml_type != plain.tensors[n].ggml_type or not np.array_equal(t.data, plain.tensors[n].data)}
    # the covered tensor is re-chosen; with an imatrix llama.cpp also guards the first
    # eighth of ffn_down (30 layers: 3) with Q4_1
    assert changed == {covered, "blk.0.ffn_down.weight", "blk.1.ffn_down.weight", "blk.2.ffn_down.weight"}
    assert guided.tensors["blk.0.ffn_down.weight"].ggml_type == T.Q4_1


def test_cli_errors_name_the_problem(tmp_path):
    missing = run_cli(str(tmp_path / "nope.gguf"), str(tmp_path / "out.gguf"), "--type", "Q4_K_M")
    assert missing.exit_code == 2 and "GGUF file not found" in missing.output
    (tmp_path / "hf").mkdir()
    folder = run_cli(str(tmp_path / "hf"), str(tmp_path / "out.gguf"), "--type", "Q4_K_M")
    assert folder.exit_code == 2 and "no config.json (not a Hugging Face checkpoint directory)" in folder.output
    bad_type = run_cli(smollm2_135m_gguf_path(), str(tmp_path / "out.gguf"), "--type", "Q3_K_M")
    assert bad_type.exit_code == 2 and "Invalid value for '--type'" in bad_type.output
    same = run_cli(smollm2_135m_gguf_path(), smollm2_135m_gguf_path(), "--type", "Q8_0")
    assert same.exit_code == 2 and "output must differ from the input file" in same.output
    unwritable = run_cli(smollm2_135m_gguf_path(), str(tmp_path / "no" / "such" / "dir.gguf"), "--type", "Q8_0")
    assert unwritable.exit_code == 2 and "output folder does not exist" in unwritable.output
    assert not (tmp_path / "out.gguf").exists()
