"""The quantizers against llama.cpp itself, on random blocks and on SmolLM2's real tensors.

llama.cpp is reached two ways, both the library llama-cpp-python ships: ggml_quantize_chunk
(libggml-base, via ctypes) for single tensors, and llama_model_quantize for whole files.
"""

from __future__ import annotations

import ctypes
import os

import llama_cpp
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as reference_dequantize

from backends.bundled_models import smollm2_135m_gguf_path
from backends.gguf_export import GGUFQuantizer, dense_tensor, writer_with_metadata_of
from backends.llama_cpp_reference import load_llama_cpp
from backends.gguf_file import GGUFFile
from backends.quantization import quantizer_kquants, quantizer_legacy
from backends.quantization.pack_blocks import pack_blocks
from backends.quantization.quantizer import quantize_tensor

T = GGMLQuantizationType
_GGML = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
_GGML.ggml_quantize_chunk.restype = ctypes.c_size_t
_GGML.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                      ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]


def llama_quantize(x: np.ndarray, ggml_type: T, importance: np.ndarray | None = None) -> np.ndarray:
    """llama.cpp's own encoding of x [rows, cols]: uint8 [num_blocks, type_size]."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    out = np.zeros((x.size // block_size, type_size), np.uint8)
    imp = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    _GGML.ggml_quantize_chunk(int(ggml_type), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1],
                              None if imp is None else imp.ctypes.data)
    return out


def weighted_error(x: np.ndarray, raw: np.ndarray, ggml_type: T, weights: np.ndarray | None = None) -> float:
    """sum w * (decoded - x)**2 with llama.cpp's no-imatrix weights unless given.

    Q4_K/Q5_K: av_x + |x| (av_x the RMS of the weight's 32-weight sub-block); Q6_K: x**2.
    """
    x64 = x.astype(np.float64)
    if weights is None:
        if ggml_type == T.Q6_K:
            weights = x64 * x64
        else:
            sub = x64.reshape(-1, 32)
            weights = (np.sqrt((sub * sub).mean(axis=1, keepdims=True)) + np.abs(sub)).reshape(x.shape)
    decoded = reference_dequantize(raw.reshape(x.shape[0], -1), ggml_type).astype(np.float64)
    return float((weights * (decoded - x64) ** 2).sum())


def random_weights(rows: int, cols: int, seed: int) -> np.ndarray:
    """Gaussian weights with heavy-tailed outliers, an all-zero block and a constant block."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32) * 0.02
    x[rng.random(x.shape) < 0.01] *= 20
    x[0, :256] = 0
    x[1, :256] = -0.03
    return x


LEGACY = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
KQUANTS = [T.Q4_K, T.Q5_K, T.Q6_K]


def ours(ggml_type: T, x: np.ndarray, importance=None, refine: bool = True) -> np.ndarray:
    if ggml_type in LEGACY:
        return pack_blocks(getattr(quantizer_legacy, f"quantize_{ggml_type.name.lower()}")(x, importance))
    fn = getattr(quantizer_kquants, f"quantize_{ggml_type.name.lower()}")
    return pack_blocks(fn(x, importance, refine=refine))


@pytest.mark.parametrize("ggml_type", LEGACY, ids=lambda t: t.name)
def test_legacy_types_are_byte_identical_to_llama_cpp(ggml_type):
    x = random_weights(48, 512, seed=1)
    assert np.array_equal(ours(ggml_type, x), llama_quantize(x, ggml_type))


@pytest.mark.parametrize("ggml_type", LEGACY[:4] + KQUANTS, ids=lambda t: t.name)
def test_with_imatrix_and_unrefined_nearly_all_blocks_match_llama_cpp(ggml_type):
    # Float searches break near-ties differently in numpy (pairwise sums) than in C, so a
    # few blocks may differ; a systematic slip would show in far more of them. Plain
    # Gaussian weights: a constant or outlier-dominated group makes exact ties common.
    x = np.random.default_rng(2).standard_normal((48, 512)).astype(np.float32) * 0.02
    importance = np.random.default_rng(3).random(512).astype(np.float32) + 0.05
    for imp in (None, importance) if ggml_type in KQUANTS else (importance,):
        mine = reference_dequantize(ours(ggml_type, x, imp, refine=False), ggml_type)
        theirs = reference_dequantize(llama_quantize(x, ggml_type, imp), ggml_type)
        same = (mine == theirs).mean()  # per weight: a Q6_K block holds 16 searches
        assert same >= 0.98, f"{ggml_type.name} imatrix={imp is not None}: {same:.4f}"


@pytest.mark.parametrize("ggml_type", KQUANTS, ids=lambda t: t.name)
def test_refinement_never_loses_to_the_unrefined_choice(ggml_type):
    x = random_weights(32, 1024, seed=4)
    refined = ours(ggml_type, x)
    unrefined = ours(ggml_type, x, refine=False)
    per_block = [weighted_error(x[i:i + 1], r, ggml_type) <= weighted_error(x[i:i + 1], u, ggml_type) * (1 + 1e-6)
                 for i, (r, u) in enumerate(zip(refined.reshape(32, -1), unrefined.reshape(32, -1)))]
    assert all(per_block)
    assert weighted_error(x, refined, ggml_type) < weighted_error(x, unrefined, ggml_type)


@pytest.mark.parametrize("ggml_type", LEGACY + KQUANTS, ids=lambda t: t.name)
def test_zero_and_constant_blocks_decode_exactly(ggml_type):
    x = np.zeros((2, 256), np.float32)
    x[1] = -0.03
    decoded = reference_dequantize(quantize_tensor(x, ggml_type), ggml_type)
    assert np.array_equal(decoded[0], np.zeros(256, np.float32))
    # a constant row is one scale (or min) times an integer: within fp16 rounding of -0.03
    assert np.allclose(decoded[1], -0.03, rtol=2e-3)


@pytest.mark.parametrize("ggml_type", [T.Q4_0, T.Q4_1, T.Q4_K, T.Q5_K, T.Q6_K], ids=lambda t: t.name)
def test_imatrix_moves_error_onto_unimportant_columns(ggml_type):
    x = random_weights(64, 512, seed=5)
    importance = np.ones(512, np.float32)
    importance[::8] = 100.0  # every 8th column matters a hundred times more
    def column_error(raw):
        decoded = reference_dequantize(raw.reshape(64, -1), ggml_type)
        return ((decoded - x) ** 2).sum(axis=0)
    plain = column_error(quantize_tensor(x, ggml_type))
    guided = column_error(quantize_tensor(x, ggml_type, importance=importance))
    assert guided[::8].sum() < plain[::8].sum()
    assert (importance * guided).sum() < (importance * plain).sum()


def test_quantize_tensor_rejects_bad_input_by_name():
    x = np.zeros((2, 300), np.float32)
    with pytest.raises(ValueError, match="Q4_K: rows of 300 weights are not a multiple of the block size 256"):
        quantize_tensor(x, "Q4_K")
    with pytest.raises(ValueError, match=r"importance must have one weight per column \(256\), got 3"):
        quantize_tensor(np.zeros((2, 256), np.float32), "Q6_K", importance=np.ones(3))
    with pytest.raises(ValueError, match="quantizing to Q2_K is not supported"):
        quantize_tensor(np.zeros((2, 256), np.float32), "Q2_K")
    with pytest.raises(ValueError, match="weights must be finite"):
        quantize_tensor(np.full((1, 32), np.inf, np.float32), "Q8_0")


# --- the fidelity test: a whole model, ours against llama_model_quantize -----------------

@pytest.fixture(scope="session")
def smollm2_files(tmp_path_factory):
    """SmolLM2 dequantized into an F32 GGUF, then llama.cpp's and our Q4_K_M of it."""
    folder = tmp_path_factory.mktemp("smollm2_q4_k_m")
    source = GGUFFile(smollm2_135m_gguf_path())
    f32 = str(folder / "f32.gguf")
    writer = writer_with_metadata_of(source, f32)
    writer.add_file_type(0)  # ALL_F32
    for name, tensor in source.tensors.items():
        writer.add_tensor(name, dense_tensor(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    theirs = str(folder / "llama_cpp_q4_k_m.gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(f32.encode(), theirs.encode(), ctypes.byref(params)) == 0
    mine = str(folder / "ours_q4_k_m.gguf")
    GGUFQuantizer(f32, "Q4_K_M").write(mine)
    return GGUFFile(f32), GGUFFile(theirs), GGUFFile(mine)


def test_q4_k_m_of_smollm2_is_at_least_as_good_as_llama_cpp(smollm2_files):
    f32, theirs, mine = smollm2_files
    assert set(mine.tensors) == set(theirs.tensors)  # llama.cpp writes them in layer order, we in file order
    types = {n: t.ggml_type.name for n, t in theirs.tensors.items()}
    assert {n: t.ggml_type.name for n, t in mine.tensors.items()} == types
    assert sorted(types.values()).count("Q4_K") == 16 and sorted(types.values()).count("Q6_K") == 14
    worse = []
    for name, their_tensor in theirs.tensors.items():
        mine_raw, their_raw = np.asarray(mine.tensors[name].data), np.asarray(their_tensor.data)
        if their_tensor.ggml_type in (T.Q4_K, T.Q6_K):
            x = np.asarray(f32.tensors[name].data)
            ratio = (weighted_error(x, mine_raw, their_tensor.ggml_type)
                     / weighted_error(x, their_raw, their_tensor.ggml_type))
            if ratio > 1 + 1e-6:
                worse.append((name, ratio))
        else:  # Q5_0, Q8_0 (llama.cpp's reference paths) and the F32 norms: the same bytes
            assert np.array_equal(mine_raw, their_raw), name
    assert worse == []


def test_llama_cpp_and_our_engine_run_our_q4_k_m_alike(smollm2_files):
    from backends.engine_config import EngineConfig
    from backends.loader import load_engine
    from backends.sampling_params import SamplingParams

    path = smollm2_files[2].path
    llm = load_llama_cpp(path, n_ctx=128, n_threads=2)
    prompt_ids = llm.tokenize(b"The capital of France is", add_bos=False)
    theirs = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1):
        theirs.append(token)
        if len(theirs) == 6:
            break
    assert llm.detokenize(theirs).decode().startswith(" Paris.")
    engine = load_engine(EngineConfig(name="q4km", model=path, max_model_len=128), kv_cache_bytes=16 << 20)
    assert engine.tokenizer.encode("The capital of France is") == prompt_ids
    mine = engine.generate(prompt_ids, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    assert mine == theirs


# --- mixtures: which tensor gets which type ------------------------------------------------

from backends.quantization.quant_mixture import TensorSpec, plan_tensor_types, use_more_bits  # noqa: E402


def llama_like(num_layers: int, width: int, ffn: int, tied: bool) -> list[TensorSpec]:
    specs = [TensorSpec("token_embd.weight", (1000, width)), TensorSpec("output_norm.weight", (width,))]
    if not tied:
        specs.append(TensorSpec("output.weight", (1000, width)))
    for i in reversed(range(num_layers)):  # file order must not matter
        specs += [TensorSpec(f"blk.{i}.attn_norm.weight", (width,)),
                  TensorSpec(f"blk.{i}.attn_q.weight", (width, width)),
                  TensorSpec(f"blk.{i}.attn_v.weight", (width // 4, width)),
                  TensorSpec(f"blk.{i}.ffn_down.weight", (width, ffn)),
                  TensorSpec(f"blk.{i}.ffn_up.weight", (ffn, width))]
    return specs


def test_use_more_bits_picks_llama_cpp_layers():
    assert [i for i in range(32) if use_more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28,
                                                               29, 30, 31]
    assert [i for i in range(30) if use_more_bits(i, 30)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


def test_q4_k_m_plan_for_a_llama_with_256_wide_rows():
    plan = plan_tensor_types(llama_like(32, 4096, 11008 + 256, tied=False), "Q4_K_M")
    more = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}
    for i in range(32):
        expected = T.Q6_K if i in more else T.Q4_K
        assert plan[f"blk.{i}.attn_v.weight"] == expected and plan[f"blk.{i}.ffn_down.weight"] == expected
        assert plan[f"blk.{i}.attn_q.weight"] == T.Q4_K and plan[f"blk.{i}.ffn_up.weight"] == T.Q4_K
        assert plan[f"blk.{i}.attn_norm.weight"] is None
    assert plan["output.weight"] == T.Q6_K and plan["token_embd.weight"] == T.Q4_K
    assert plan["output_norm.weight"] is None


def test_q4_k_s_plan_and_fallbacks_for_odd_widths():
    plan = plan_tensor_types(llama_like(32, 4096, 11264, tied=True), "Q4_K_S")
    assert [plan[f"blk.{i}.attn_v.weight"] for i in range(6)] == [T.Q5_K] * 4 + [T.Q4_K] * 2
    assert [plan[f"blk.{i}.ffn_down.weight"] for i in range(6)] == [T.Q5_K] * 4 + [T.Q4_K] * 2
    assert plan["token_embd.weight"] == T.Q6_K  # tied: the output's rule
    odd = plan_tensor_types(llama_like(8, 576, 1536, tied=True), "Q4_K_S")  # 576 = 2.25 x 256
    assert odd["blk.0.attn_v.weight"] == T.Q5_1  # Q5_K falls back to Q5_1
    assert odd["blk.1.attn_v.weight"] == T.Q5_1 and odd["blk.4.attn_v.weight"] == T.Q5_0  # Q4_K -> Q5_0
    assert odd["blk.0.ffn_down.weight"] == T.Q5_K  # 1536 columns divide by 256
    assert odd["token_embd.weight"] == T.Q8_0  # Q6_K does not fit 576 either: Q8_0
    tiny = plan_tensor_types([TensorSpec("blk.0.ffn_up.weight", (8, 48))], "Q4_K_M")
    assert tiny["blk.0.ffn_up.weight"] == T.F16  # not even 32 divides 48


def test_pure_and_legacy_mixtures():
    specs = llama_like(16, 512, 1024, tied=False)
    pure = plan_tensor_types(specs, "Q5_K")
    assert {t for t in pure.values() if t is not None} == {T.Q5_K}
    q4_0 = plan_tensor_types(specs, "Q4_0")
    assert q4_0["output.weight"] == T.Q6_K and q4_0["blk.0.ffn_down.weight"] == T.Q4_0
    guarded = plan_tensor_types(specs, "Q4_0", has_imatrix=True)
    assert [guarded[f"blk.{i}.ffn_down.weight"] for i in range(3)] == [T.Q4_1, T.Q4_1, T.Q4_0]
    q8 = plan_tensor_types(specs, "q8_0")
    assert q8["output.weight"] == T.Q8_0 and q8["blk.3.attn_v.weight"] == T.Q8_0
    with pytest.raises(ValueError, match="type must be one of Q4_K_M, Q4_K_S"):
        plan_tensor_types(specs, "Q3_K_M")


def test_q4_k_m_plan_reproduces_the_bundled_gemma_file():
    from backends.bundled_models import gemma3_270m_gguf_path

    gemma = GGUFFile(gemma3_270m_gguf_path())
    plan = plan_tensor_types([TensorSpec(t.name, t.shape) for t in gemma.tensors.values()], "Q4_K_M")
    assert {n: (plan[n] or t.ggml_type) for n, t in gemma.tensors.items()} == {
        n: t.ggml_type for n, t in gemma.tensors.items()}
