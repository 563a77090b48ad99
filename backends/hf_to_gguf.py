"""A Hugging Face safetensors checkpoint directory written as an unquantized GGUF file.

    write_unquantized_gguf("SmolLM2-135M-Instruct/", "smollm2-f32.gguf")

What llama.cpp's convert_hf_to_gguf.py does for the Llama family (LlamaForCausalLM,
MistralForCausalLM, Qwen2ForCausalLM): tensors renamed to GGUF names (SafetensorsCheckpoint
does that), Q/K rows permuted into llama.cpp's per-head pair order, the model's hyperparameters
under `llama.*`, and the tokenizer (backends/hf_vocab_gguf.py). F32 and F16 tensors keep their
type, BF16 ones become F32 (exactly); vectors (norms, biases) are always F32, as llama.cpp wants.

NOTE: Qwen2 is written as architecture "llama" with its Q/K biases (llama.cpp's llama graph
takes optional q/k/v biases): the same weights our GGUF loader un-permutes for either name, so
both readers agree. Other architectures (Gemma 3 included) are refused by name.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

from backends.checkpoint import SafetensorsCheckpoint
from backends.hf_tokenizer_dir import HFTokenizerDir
from backends.hf_vocab_gguf import add_vocab
from backends.models.llama import hf_rope_theta as rope_theta

SUPPORTED_HF_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_GGUF_ARCHITECTURE = "llama"


def read_hf_config(folder: str) -> dict[str, Any]:
    """config.json of a checkpoint directory, refusing architectures we cannot convert."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{folder}: no config.json (not a Hugging Face checkpoint directory)")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    architectures = config.get("architectures") or []
    if not any(a in SUPPORTED_HF_ARCHITECTURES for a in architectures):
        raise ValueError(f"{folder}: converting {architectures or 'an unnamed architecture'} to GGUF is not "
                         f"supported; supported: {', '.join(SUPPORTED_HF_ARCHITECTURES)}")
    return config


def gguf_tensor_names(checkpoint: SafetensorsCheckpoint) -> list[str]:
    """GGUF names of the checkpoint's tensors, in llama.cpp's order (embedding, layers, output)."""
    names = []
    for pattern in checkpoint.arch.HF_TENSOR_NAMES:
        layers = range(checkpoint.config.num_layers) if "{i}" in pattern else [None]
        names += [pattern.format(i=i) if i is not None else pattern for i in layers]
    present = [n for n in names if checkpoint.has(n)]
    return sorted(present, key=lambda n: (not n.startswith("token_embd"), n.startswith(("output", "output_norm")),
                                          _layer(n)))


def _layer(name: str) -> int:
    return int(name.split(".")[1]) if name.startswith("blk.") else -1


def llama_cpp_rows(checkpoint: SafetensorsCheckpoint, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` with its rows in llama.cpp's order: the inverse of the loader's gguf_row_order."""
    order = checkpoint.arch.gguf_row_order(name, tensor.shape[0], checkpoint.config)
    if order is None:
        return tensor
    # The loader reads row r of HF's order from stored row order[r]; so put it there.
    return tensor[torch.argsort(order)]


def write_unquantized_gguf(folder: str, dest: str) -> None:
    """Write the checkpoint in `folder` as a GGUF file at `dest` (F32/F16 tensors)."""
    hf_config = read_hf_config(folder)
    checkpoint = SafetensorsCheckpoint(folder)
    config = checkpoint.config
    tokenizer = HFTokenizerDir(folder)
    arch = _GGUF_ARCHITECTURE

    writer = GGUFWriter(dest, arch)
    writer.add_name(str(hf_config.get("_name_or_path") or os.path.basename(os.path.normpath(folder))))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(rope_theta(hf_config))
    writer.add_rope_dimension_count(config.head_dim)
    if config.head_dim != config.hidden_size // config.num_heads:  # llama.cpp assumes hidden / heads otherwise
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    writer.add_vocab_size(config.vocab_size)
    add_vocab(writer, tokenizer, folder, config.vocab_size)

    names = gguf_tensor_names(checkpoint)
    any_f16 = False
    for name in names:
        raw = checkpoint.raw(name)
        tensor = raw.data.reshape(raw.shape)
        if tensor.dim() == 1 or raw.ggml_type != GGMLQuantizationType.F16:
            tensor = tensor.float()  # vectors, F32 and BF16 (exact in F32)
        any_f16 |= tensor.dtype == torch.float16
        tensor = llama_cpp_rows(checkpoint, name, tensor)
        writer.add_tensor(name, np.ascontiguousarray(tensor.numpy()))
    writer.add_file_type(int(LlamaFileType.MOSTLY_F16 if any_f16 else LlamaFileType.ALL_F32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
