"""Model architectures. Adding one is one file here plus a line in ARCHITECTURES.

Each architecture module defines GGUF_ARCHITECTURES and HF_ARCHITECTURES (the names it
serves), HF_TENSOR_NAMES (GGUF name -> HF name), config_from_gguf, config_from_hf, and
a model class built from a ModelConfig and a WeightSource. Optional hooks:
gguf_row_order (row permutation of a GGUF tensor) and hf_tensor_transform.
"""

from __future__ import annotations

from types import ModuleType

from backends.models import gemma3, llama

ARCHITECTURES: dict[str, ModuleType] = {"llama": llama, "gemma3": gemma3}
MODEL_CLASSES = {"llama": llama.LlamaModel, "gemma3": gemma3.Gemma3Model}


def for_gguf(gguf_architecture: str) -> ModuleType:
    for module in ARCHITECTURES.values():
        if gguf_architecture in module.GGUF_ARCHITECTURES:
            return module
    supported = sorted(a for m in ARCHITECTURES.values() for a in m.GGUF_ARCHITECTURES)
    raise ValueError(f"GGUF architecture {gguf_architecture!r} is not supported (supported: {supported})")


def for_hf(hf_architectures: list[str]) -> ModuleType:
    for module in ARCHITECTURES.values():
        if any(a in module.HF_ARCHITECTURES for a in hf_architectures):
            return module
    supported = sorted(a for m in ARCHITECTURES.values() for a in m.HF_ARCHITECTURES)
    raise ValueError(f"HF architectures {hf_architectures} are not supported (supported: {supported})")
