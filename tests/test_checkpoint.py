"""Checkpoint loading: GGUF metadata -> ModelConfig, and a HF safetensors directory written from
the same weights gives the same model (exact logits)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from backends import models
from backends.bundled_models import gemma3_270m_gguf_path, smollm2_135m_gguf_path
from backends.checkpoint import GGUFCheckpoint, SafetensorsCheckpoint, open_checkpoint
from backends.dense_weights import DenseWeights
from backends.models import gemma3, llama


def test_gguf_configs_of_bundled_models():
    smol = open_checkpoint(smollm2_135m_gguf_path()).config
    assert (smol.architecture, smol.num_layers, smol.hidden_size, smol.intermediate_size) == ("llama", 30, 576, 1536)
    assert (smol.num_heads, smol.num_kv_heads, smol.head_dim, smol.vocab_size) == (9, 3, 64, 49152)
    assert smol.rope_theta == 100000.0 and smol.tie_word_embeddings
    gemma = open_checkpoint(gemma3_270m_gguf_path()).config
    assert (gemma.architecture, gemma.num_layers, gemma.hidden_size, gemma.intermediate_size) == ("gemma3", 18, 640, 2048)
    assert (gemma.num_heads, gemma.num_kv_heads, gemma.head_dim, gemma.vocab_size) == (4, 1, 256, 262144)
    assert (gemma.sliding_window, gemma.rope_theta, gemma.rope_local_theta) == (512, 1e6, 10000.0)
    # Layers 5, 11 and 17 attend globally; the rest within the 512-token window.
    assert [i for i in range(18) if not gemma.is_sliding_layer(i)] == [5, 11, 17]


def test_llama_qk_rows_are_restored_to_hf_order():
    # Two heads of 4 rows; llama.cpp stores each head's rows as (0, 2, 1, 3).
    cfg = open_checkpoint(smollm2_135m_gguf_path()).config
    cfg = type(cfg)(**{**cfg.__dict__, "num_heads": 2, "num_kv_heads": 2, "head_dim": 4, "hidden_size": 8})
    order = llama.gguf_row_order("blk.0.attn_q.weight", 8, cfg)
    assert order.tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert llama.gguf_row_order("blk.0.attn_v.weight", 8, cfg) is None


def test_gemma_hf_norms_are_shifted_by_one():
    w = torch.tensor([0.0, -0.5, 1.5])
    assert gemma3.hf_tensor_transform("blk.0.attn_norm.weight", w).tolist() == [1.0, 0.5, 2.5]
    assert gemma3.hf_tensor_transform("blk.0.attn_q.weight", w) is w


def test_safetensors_checkpoint_matches_gguf(tmp_path):
    gguf = GGUFCheckpoint(smollm2_135m_gguf_path())
    cfg = gguf.config
    tensors = {}
    for gguf_name, hf_name in llama.HF_TENSOR_NAMES.items():
        for i in range(cfg.num_layers) if "{i}" in gguf_name else [None]:
            name = gguf_name.format(i=i)
            if gguf.has(name):
                tensors[hf_name.format(i=i)] = gguf.dense(name).contiguous()
    # Two shards, as large checkpoints come.
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[::2]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({n: tensors[n] for n in names[1::2]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta, "tie_word_embeddings": True,
    }))
    st = open_checkpoint(str(tmp_path))
    assert isinstance(st, SafetensorsCheckpoint)
    assert st.config == cfg
    for name in ("blk.3.attn_q.weight", "blk.7.ffn_down.weight", "token_embd.weight", "output_norm.weight"):
        assert torch.equal(st.dense(name), gguf.dense(name)), name
    assert not st.has("output.weight")


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_checkpoint(str(tmp_path / "missing.gguf"))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="neither a GGUF"):
        open_checkpoint(str(junk))
    with pytest.raises(ValueError, match="config.json"):
        open_checkpoint(str(tmp_path))
    with pytest.raises(ValueError, match="not supported"):
        models.for_gguf("mamba")


def test_hf_rope_theta_from_either_transformers_layout():
    base = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1, "intermediate_size": 128,
            "vocab_size": 10}
    assert llama.config_from_hf({**base, "rope_theta": 100000.0}).rope_theta == 100000.0
    # transformers >= 5 writes rope_parameters instead of rope_theta
    assert llama.config_from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}}
                                ).rope_theta == 100000.0
    assert llama.config_from_hf(base).rope_theta == 10000.0
    with pytest.raises(ValueError, match="RoPE scaling"):
        llama.config_from_hf({**base, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})
