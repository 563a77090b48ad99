"""Which GGML type each tensor gets under a quantization mixture such as Q4_K_M.

    plan = plan_tensor_types([TensorSpec(name, shape), ...], "Q4_K_M")
    plan["blk.0.ffn_down.weight"]   # GGMLQuantizationType.Q6_K; None = keep as stored

The rules are llama.cpp's (src/llama-quant.cpp: tensor_allows_quantization,
llama_tensor_get_type_impl, tensor_type_fallback) for dense models such as llama and
gemma3:
  - only 2-D (or higher) tensors named *weight are quantized, never *_norm.weight;
  - output.weight (or token_embd.weight when the output is tied to it) gets Q6_K, or
    Q8_0 when its rows are not a multiple of the default type's block;
  - Q4_K_M: attn_v and ffn_down get Q6_K on the layers use_more_bits picks (the first and
    last eighth, and every third layer between); Q4_K_S: Q5_K for the first 4 attn_v and
    the first eighth of ffn_down;
  - a type whose block does not divide the row falls back: Q4_K -> Q5_0, Q5_K -> Q5_1,
    Q6_K -> Q8_0, and to F16 if even 32 does not divide it.
Q4_K and Q5_K are "pure" mixtures (llama-quantize --pure: one type everywhere, with the
fallbacks); Q6_K, Q8_0, Q4_0 and Q4_1 are llama.cpp's file types of those names.
Not covered (no such tensors in the architectures served here): mixture-of-experts
layers, 70B-specific upgrades and Falcon's special cases.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

_T = GGMLQuantizationType


@dataclass(frozen=True)
class Mixture:
    """A named recipe: the default type, the file type to record, and whether it is pure."""

    name: str
    default_type: GGMLQuantizationType
    file_type: LlamaFileType  # written to general.file_type
    pure: bool  # True: no per-tensor upgrades, only the fallbacks


MIXTURES: dict[str, Mixture] = {m.name: m for m in (
    Mixture("Q4_K_M", _T.Q4_K, LlamaFileType.MOSTLY_Q4_K_M, pure=False),
    Mixture("Q4_K_S", _T.Q4_K, LlamaFileType.MOSTLY_Q4_K_S, pure=False),
    # NOTE: llama.cpp has no file type for all-Q4_K or all-Q5_K; the closest is recorded.
    Mixture("Q4_K", _T.Q4_K, LlamaFileType.MOSTLY_Q4_K_S, pure=True),
    Mixture("Q5_K", _T.Q5_K, LlamaFileType.MOSTLY_Q5_K_S, pure=True),
    Mixture("Q6_K", _T.Q6_K, LlamaFileType.MOSTLY_Q6_K, pure=False),
    Mixture("Q8_0", _T.Q8_0, LlamaFileType.MOSTLY_Q8_0, pure=False),
    Mixture("Q4_0", _T.Q4_0, LlamaFileType.MOSTLY_Q4_0, pure=False),
    Mixture("Q4_1", _T.Q4_1, LlamaFileType.MOSTLY_Q4_1, pure=False),
)}

_FALLBACK = {_T.Q4_K: _T.Q5_0, _T.Q5_K: _T.Q5_1, _T.Q6_K: _T.Q8_0,
             _T.Q2_K: _T.Q4_0, _T.Q3_K: _T.Q4_0}
# Substrings llama.cpp never quantizes, besides norms (tensor_allows_quantization).
_NEVER_QUANTIZED = ("ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj", "ssm_conv1d",
                    "attn_rel_b.weight", "position_embd", "token_types.weight")


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as the planner sees it."""

    name: str  # GGUF name, e.g. "blk.3.attn_v.weight"
    shape: tuple[int, ...]  # torch order: the contiguous (blocked) dimension last


def resolve_mixture(name: str) -> Mixture:
    mixture = MIXTURES.get(name.upper())
    if mixture is None:
        raise ValueError(f"type must be one of {', '.join(MIXTURES)}, got {name!r}")
    return mixture


def use_more_bits(i_layer: int, num_layers: int) -> bool:
    """llama.cpp's pick of layers worth more bits: first/last eighth, every third between."""
    return i_layer < num_layers // 8 or i_layer >= 7 * num_layers // 8 or (i_layer - num_layers // 8) % 3 == 2


def allows_quantization(spec: TensorSpec) -> bool:
    name = spec.name
    if len(spec.shape) < 2 or not name.endswith("weight") or "_norm.weight" in name:
        return False
    return name != "pos_embd.weight" and not any(part in name for part in _NEVER_QUANTIZED)


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    # NOTE: fused QKV counts as attn_v, as in llama.cpp (category_is_attn_v).
    for part, category in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"),
                           ("attn_v.weight", "attn_v"), ("ffn_down", "ffn_down")):
        if part in name:
            return category
    return "other"


def _layer(name: str) -> int:
    match = re.match(r"blk\.(\d+)\.", name)
    return int(match.group(1)) if match else -1


def _fallback(new_type: GGMLQuantizationType, num_cols: int) -> GGMLQuantizationType:
    if num_cols % GGML_QUANT_SIZES[new_type][0] == 0:
        return new_type
    if new_type not in _FALLBACK:
        raise ValueError(f"no fallback for {new_type.name} on rows of {num_cols} weights")
    new_type = _FALLBACK[new_type]
    return new_type if num_cols % GGML_QUANT_SIZES[new_type][0] == 0 else _T.F16


def plan_tensor_types(tensors: Sequence[TensorSpec], mixture: str | Mixture,
                      has_imatrix: bool = False) -> dict[str, GGMLQuantizationType | None]:
    """Target type per tensor name; None = not quantized (keep the stored type)."""
    mix = mixture if isinstance(mixture, Mixture) else resolve_mixture(mixture)
    # NOTE: llama.cpp visits tensors by layer number, then name (weight_name_comparer), so
    # "blk.10" comes after "blk.9" whatever order the file stores them in.
    tensors = sorted(tensors, key=lambda t: (_layer(t.name), t.name))
    names = [t.name for t in tensors]
    tied = "output.weight" not in names
    num_attn_v = sum(_category(n) == "attn_v" for n in names)
    num_ffn_down = sum(_category(n) == "ffn_down" for n in names)
    i_attn_v = i_ffn_down = 0
    plan: dict[str, GGMLQuantizationType | None] = {}
    for spec in tensors:
        if not allows_quantization(spec):
            plan[spec.name] = None
            continue
        new_type, category, cols = mix.default_type, _category(spec.name), spec.shape[-1]
        if not mix.pure:
            if category == "output" or (tied and category == "token_embd"):
                if cols % GGML_QUANT_SIZES[new_type][0] != 0:
                    new_type = _T.Q8_0
                elif new_type != _T.Q8_0:
                    new_type = _T.Q6_K
            elif category == "attn_v":
                if mix.name == "Q4_K_M" and use_more_bits(i_attn_v, num_attn_v):
                    new_type = _T.Q6_K
                elif mix.name == "Q4_K_S" and i_attn_v < 4:
                    new_type = _T.Q5_K
                i_attn_v += 1
            elif category == "ffn_down":
                if mix.name == "Q4_K_M" and use_more_bits(i_ffn_down, num_ffn_down):
                    new_type = _T.Q6_K
                elif mix.name == "Q4_K_S" and i_ffn_down < num_ffn_down // 8:
                    new_type = _T.Q5_K
                elif mix.name == "Q4_0" and has_imatrix and i_ffn_down < num_ffn_down // 8:
                    # llama.cpp guards the first ffn_down layers of imatrix Q4_0 with Q4_1
                    new_type = _T.Q4_1
                i_ffn_down += 1
        plan[spec.name] = _fallback(new_type, cols)
    return plan
