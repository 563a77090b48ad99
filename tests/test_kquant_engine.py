"""The k-quant engine: block-format products equal dense products of the dequantized weights,
and the engine generates what the full-precision engine generates.

Products are float32 on both sides; they differ only by summation order, so the tolerance is
a few float32 ulps of the output scale (1e-5 of max |y|), far below any quantization effect.
Where a matrix runs on the integer path (8-bit activations, as llama.cpp multiplies), the
reference multiplies the same 8-bit activations (kernel_cpu.fake_quantize) in float.
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType

from backends.checkpoint import GGUFCheckpoint, open_checkpoint
from backends.engine_config import EngineConfig
from backends.kquant_weights import KQuantWeights
from backends.loader import load_engine, resolve_model_path
from backends.quantization import dequantize, format_by_name, kernel_cpu
from backends.quantization.quantized_linear import KERNEL_MAX_TOKENS, BlockMatrix, QuantizedEmbedding, QuantizedLinear
from backends.sampling_params import SamplingParams

MODELS = ("smollm2-135m", "gemma3-270m")
MAX_ROWS = 16384  # rows of each bundled matrix checked (the 262,144-row LM head: its first rows)
TOKEN_COUNTS = (1, 3, KERNEL_MAX_TOKENS, KERNEL_MAX_TOKENS + 5)  # kernel path, then dequant + GEMM
# Offsets of the fp16 scale fields of each format (random bytes there could be inf/NaN).
FP16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
               "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).abs().max() / ref.abs().max())


def _activations(matrix: BlockMatrix, x: torch.Tensor) -> torch.Tensor:
    """What the matrix multiplies: x, or its 8-bit quantization on the integer path."""
    return kernel_cpu.fake_quantize(x) if matrix.int8 else x


def _matrices_of(name: str) -> list[tuple[str, BlockMatrix]]:
    """One block matrix per distinct (type, shape) in a bundled file, tied embedding included."""
    checkpoint = GGUFCheckpoint(resolve_model_path(f"bundled:{name}"))
    seen, out = set(), []
    for tensor_name, info in checkpoint.file.tensors.items():
        key = (info.ggml_type, tuple(info.shape))
        if len(info.shape) != 2 or info.ggml_type.name.startswith(("F", "BF")) or key in seen:
            continue
        seen.add(key)
        raw = checkpoint.raw(tensor_name)
        rows = min(raw.shape[0], MAX_ROWS)
        blocks = raw.data.reshape(raw.shape[0], -1)[:rows]
        out.append((tensor_name, BlockMatrix(blocks, raw.ggml_type, rows, raw.shape[1])))
    return out


def _random_blocks(fmt_name: str, rows: int, cols: int, seed: int) -> torch.Tensor:
    fmt = format_by_name(fmt_name)
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(rows * cols // fmt.block_size, fmt.type_size), dtype=np.uint8)
    for offset in FP16_FIELDS[fmt_name]:  # finite scales of either sign, 2^-10 .. 2^-4
        scales = (rng.uniform(0.001, 0.06, size=blocks.shape[0]) * rng.choice([-1, 1], size=blocks.shape[0]))
        blocks[:, offset:offset + 2] = scales.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return torch.from_numpy(blocks.reshape(rows, -1))


@pytest.fixture(scope="module", params=MODELS)
def bundled_matrices(request):
    return _matrices_of(request.param)


def test_the_compiled_kernels_are_in_use():
    assert kernel_cpu.available(), kernel_cpu.build_error()


def test_every_bundled_tensor_type_multiplies_like_its_dequantized_weights(bundled_matrices):
    gen = torch.Generator().manual_seed(0)
    types = set()
    for name, matrix in bundled_matrices:
        types.add(matrix.ggml_type.name)
        weight = dequantize(matrix.blocks, matrix.ggml_type, (matrix.rows, matrix.cols))
        assert torch.equal(matrix.decode(matrix.blocks), weight), name  # the kernel's decoder is bit-exact
        layer = QuantizedLinear(matrix)
        for num_tokens in TOKEN_COUNTS:
            x = torch.randn(num_tokens, matrix.cols, generator=gen)
            assert _relative_error(layer(x), F.linear(_activations(matrix, x), weight)) < 1e-5, (name, num_tokens)
            assert _relative_error(layer(x), F.linear(x, weight)) < 3e-2, (name, num_tokens)  # 8-bit rounding only
    assert types in ({"Q4_1", "Q8_0"}, {"Q4_K", "Q5_0", "Q6_K", "Q8_0"})


@pytest.mark.parametrize("fmt_name", sorted(FP16_FIELDS))
@pytest.mark.parametrize("use_kernel", [True, False])
def test_every_format_on_random_blocks_both_paths(fmt_name, use_kernel):
    rows, cols = 48, 512
    blocks = _random_blocks(fmt_name, rows, cols, seed=len(fmt_name) + use_kernel)
    ggml_type = GGMLQuantizationType[fmt_name]
    matrix = BlockMatrix(blocks, ggml_type, rows, cols)
    matrix.use_kernel = use_kernel and matrix.use_kernel  # False: the pure-torch fallback
    matrix.int8 = matrix.int8 and matrix.use_kernel
    weight = dequantize(blocks, ggml_type, (rows, cols))
    assert torch.equal(matrix.decode(blocks), weight)
    gen = torch.Generator().manual_seed(1)
    for num_tokens in TOKEN_COUNTS:
        x = torch.randn(num_tokens, cols, generator=gen)
        assert _relative_error(matrix.times(x), F.linear(_activations(matrix, x), weight)) < 1e-5, num_tokens
    bias = torch.randn(rows, generator=gen)
    x = torch.randn(2, cols, generator=gen).bfloat16()
    y = QuantizedLinear(matrix, bias)(x)
    assert y.dtype == torch.bfloat16
    assert _relative_error(y.float(), F.linear(_activations(matrix, x.float()), weight, bias)) < 1e-2  # bf16 rounding


def test_fake_quantize_rounds_each_32_values_to_8_bits():
    """llama.cpp's Q8_0 rule: codes round(x / s) with s = max|x| / 127, s then kept as fp16."""
    if not kernel_cpu.available():
        pytest.skip(kernel_cpu.build_error())
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(2)) * torch.tensor([1e-3, 1.0, 50.0]).repeat_interleave(32)
    x[1, 32:64] = 0.0
    q = kernel_cpu.fake_quantize(x).view(3, 3, 32)
    scale = (x.view(3, 3, 32).abs().amax(-1, keepdim=True) / 127).half().float()  # kept as fp16, as llama.cpp
    codes = torch.where(scale > 0, q / scale, torch.zeros_like(q))
    assert float((codes - codes.round()).abs().max()) < 1e-4  # integers, up to the division's rounding
    assert float(codes.abs().max().round()) == 127.0
    assert torch.equal(q[1, 1], torch.zeros(32))  # an all-zero block stays zero
    assert _relative_error(q.view(3, 96), x) < 1e-2


@pytest.mark.parametrize("fmt_name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_integer_path_on_rows_of_an_odd_number_of_64_value_chunks(fmt_name):
    """96 columns: the last 64-value chunk of each row is half padding."""
    ggml_type = GGMLQuantizationType[fmt_name]
    if int(ggml_type) not in kernel_cpu.int8_formats():
        pytest.skip("no integer path on this CPU")
    blocks = _random_blocks(fmt_name, 5, 96, seed=9)
    weight = dequantize(blocks, ggml_type, (5, 96))
    gen = torch.Generator().manual_seed(3)
    for num_tokens in (1, 4, 5):
        x = torch.randn(num_tokens, 96, generator=gen)
        y = kernel_cpu.qmatmul(x, blocks, ggml_type, 96, True)
        assert _relative_error(y, F.linear(kernel_cpu.fake_quantize(x), weight)) < 1e-5


INT8_FORMATS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("fmt_name", INT8_FORMATS)
def test_integer_path_gives_a_token_the_same_bits_in_any_batch(fmt_name):
    """Tiles of 16 and 8-15 tokens, fewer tokens without tiles (AMX path), 4-token groups (256-bit
    path), 37 rows (a part panel) and any thread split: every token's outputs are bit-identical."""
    ggml_type = GGMLQuantizationType[fmt_name]
    if int(ggml_type) not in kernel_cpu.int8_formats():
        pytest.skip("no integer path on this CPU")
    cols = 512
    blocks = _random_blocks(fmt_name, 37, cols, seed=11)
    x = torch.randn(45, cols, generator=torch.Generator().manual_seed(4))
    full = kernel_cpu.qmatmul(x, blocks, ggml_type, cols, True)
    for a, b in [(0, 1), (44, 45), (3, 5), (0, 7), (1, 9), (0, 16), (2, 25), (9, 45), (5, 37)]:
        assert torch.equal(kernel_cpu.qmatmul(x[a:b], blocks, ggml_type, cols, True), full[a:b]), (a, b)
    weight = dequantize(blocks, ggml_type, (37, cols))
    assert _relative_error(full, F.linear(kernel_cpu.fake_quantize(x), weight)) < 1e-5


def test_amx_formats_and_the_switch_that_turns_them_off():
    """On AMX CPUs every integer format but Q6_K (per-16 scales) runs on tiles; ROUTEGATE_NO_AMX=1
    keeps a process on the 256-bit kernels, which agree with the same float reference."""
    import subprocess
    import sys

    amx = kernel_cpu.int8_amx_formats()
    assert amx <= kernel_cpu.int8_formats() and int(GGMLQuantizationType.Q6_K) not in amx
    if amx:
        assert amx == kernel_cpu.int8_formats() - {int(GGMLQuantizationType.Q6_K)}
    code = """
import torch, torch.nn.functional as F
from gguf import GGMLQuantizationType
from backends.quantization import dequantize, kernel_cpu
from tests.test_kquant_engine import _random_blocks, _relative_error
assert kernel_cpu.int8_amx_formats() == frozenset()
blocks = _random_blocks("Q4_K", 32, 512, seed=12)
x = torch.randn(20, 512, generator=torch.Generator().manual_seed(5))
y = kernel_cpu.qmatmul(x, blocks, GGMLQuantizationType.Q4_K, 512, True)
ref = F.linear(kernel_cpu.fake_quantize(x), dequantize(blocks, GGMLQuantizationType.Q4_K, (32, 512)))
assert _relative_error(y, ref) < 1e-5
print("ok")
"""
    env = {**os.environ, "ROUTEGATE_NO_AMX": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_embedding_decodes_the_requested_rows_only():
    blocks = _random_blocks("Q8_0", 1000, 64, seed=5)
    matrix = BlockMatrix(blocks, GGMLQuantizationType.Q8_0, 1000, 64)
    ids = torch.tensor([7, 999, 0, 7])
    rows = QuantizedEmbedding(matrix)(ids)
    assert torch.equal(rows, dequantize(blocks, "Q8_0", (1000, 64))[ids])


def test_block_matrix_rejects_a_wrong_byte_count():
    with pytest.raises(ValueError, match=r"Q4_K \[4, 256\] needs uint8 blocks \(4, 144\)"):
        BlockMatrix(torch.zeros(4, 140, dtype=torch.uint8), GGMLQuantizationType.Q4_K, 4, 256)


def test_kquant_engine_refuses_a_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "num_attention_heads": 2,
              "num_hidden_layers": 1, "intermediate_size": 16, "vocab_size": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({"model.embed_tokens.weight": torch.zeros(4, 8)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="the kquant engine needs a GGUF checkpoint"):
        KQuantWeights(open_checkpoint(str(tmp_path)))


def test_engine_kinds_are_validated():
    assert EngineConfig(name="a", model="m", engine="kquant").engine == "kquant"
    with pytest.raises(ValueError, match="engine must be one of"):
        EngineConfig(name="a", model="m", engine="int4")


PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village")
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module", params=MODELS)
def engines(request):
    name = request.param
    made = {kind: load_engine(EngineConfig(name=name, model=f"bundled:{name}", engine=kind, max_model_len=256),
                              kv_cache_bytes=64 << 20)
            for kind in ("kquant", "full_precision")}
    return name, made


def _batched(engine, prompts: list[list[int]]) -> list[list[int]]:
    request_ids = [engine.add_request(ids, GREEDY) for ids in prompts]
    got: dict[str, list[int]] = {r: [] for r in request_ids}
    while engine.has_unfinished_requests():
        for out in engine.step():
            got[out.request_id].extend(out.new_token_ids)
    return [got[r] for r in request_ids]


@contextlib.contextmanager
def float_activations(engine):
    """The engine's block matrices with the integer path off (float32 activations)."""
    matrices = [mat for m in engine.runner.model.modules() if hasattr(m, "matrix")
                for mat in {id(x): x for x in [m.matrix, *m.matrix.parts]}.values()]
    saved = [mat.int8 for mat in matrices]
    for mat in matrices:
        mat.int8 = False
    try:
        yield
    finally:
        for mat, flag in zip(matrices, saved):
            mat.int8 = flag


def test_kquant_greedy_equals_full_precision_greedy(engines):
    """Same weights (dequantized exactly), float32 activations on both sides (the integer path
    off): the same greedy tokens, alone and when all prompts share the engine's batches."""
    name, made = engines
    kquant, dense = made["kquant"], made["full_precision"]
    prompts = [kquant.tokenizer.encode(p) for p in PROMPTS]
    expected = [dense.generate(ids, GREEDY) for ids in prompts]
    with float_activations(kquant):
        assert [kquant.generate(ids, GREEDY) for ids in prompts] == expected
        assert _batched(kquant, prompts) == expected


def test_integer_path_greedy_is_the_same_alone_and_batched(engines):
    """8-bit activations: a request's tokens do not depend on what it is batched with."""
    name, made = engines
    kquant = made["kquant"]
    prompts = [kquant.tokenizer.encode(p) for p in PROMPTS]
    alone = [kquant.generate(ids, GREEDY) for ids in prompts]
    assert _batched(kquant, prompts) == alone


def test_integer_path_logits_stay_close_to_the_float_path(engines):
    """Teacher-forced on a text, 8-bit activations move the logits by a small fraction of their
    range and rarely change the top token."""
    name, made = engines
    kquant = made["kquant"]
    text = open(os.path.join(os.path.dirname(__file__), "fixtures", "fidelity_text.txt")).read()
    ids = kquant.tokenizer.encode(text)[:128]
    ours = kquant.score(ids)
    with float_activations(kquant):
        floats = kquant.score(ids)
    spread = floats.max(dim=1).values - floats.min(dim=1).values
    assert float(((ours - floats).abs().max(dim=1).values / spread).max()) < 0.05
    assert float((ours.argmax(1) == floats.argmax(1)).float().mean()) >= 0.9


def test_kquant_weights_are_views_of_the_file(engines):
    """Weight memory is the file: block matrices alias the GGUF memory map (llama's Q/K rows,
    reordered by the checkpoint, are the exception) and the tied LM head is the embedding."""
    name, made = engines
    model = made["kquant"].runner.model
    assert model.lm_head.matrix is model.embed.matrix
    file_bytes = os.path.getsize(resolve_model_path(f"bundled:{name}"))
    held = {id(part.blocks): part.blocks.numel()
            for m in model.modules() if hasattr(m, "matrix") for part in m.matrix.parts}
    assert sum(held.values()) < file_bytes
