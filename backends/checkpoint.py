"""Model checkpoints: a GGUF file or a Hugging Face safetensors directory, behind one interface.

Tensors are addressed by their GGUF names ("blk.3.attn_q.weight") whatever the source, so model
code and weight sources see one naming scheme.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType

import numpy as np
import torch
from gguf import GGMLQuantizationType

from backends import models
from backends.gguf_file import GGUFFile
from backends.model_config import ModelConfig
from backends.quantization import dequantize

_DENSE_TYPES = {
    GGMLQuantizationType.F32: torch.float32,
    GGMLQuantizationType.F16: torch.float16,
    GGMLQuantizationType.BF16: torch.bfloat16,
}


@dataclass(frozen=True)
class RawTensor:
    """A tensor as stored: block-format bytes [rows, bytes_per_row] or a dense torch tensor."""

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]  # logical shape, torch order (rows, cols)
    data: torch.Tensor


class Checkpoint:
    """Common surface of GGUFCheckpoint and SafetensorsCheckpoint."""

    path: str
    config: ModelConfig
    arch: ModuleType

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def raw(self, name: str) -> RawTensor:
        raise NotImplementedError

    def dense(self, name: str) -> torch.Tensor:
        """The tensor as float32, dequantized if stored in a block format."""
        t = self.raw(name)
        if t.ggml_type in _DENSE_TYPES:
            return t.data.float().reshape(t.shape)
        return dequantize(t.data, t.ggml_type, t.shape)

    @cached_property
    def fingerprint(self) -> str:
        """Digest of the weight bytes: equal for the same weights on every machine."""
        h = hashlib.sha256()
        for path in self._weight_files():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
        return h.hexdigest()[:32]

    def _weight_files(self) -> list[str]:
        raise NotImplementedError


class GGUFCheckpoint(Checkpoint):
    def __init__(self, path: str) -> None:
        self.path = path
        self.file = GGUFFile(path)
        self.arch = models.for_gguf(self.file.architecture)
        self.config = self.arch.config_from_gguf(self.file)

    def has(self, name: str) -> bool:
        return name in self.file.tensors

    def raw(self, name: str) -> RawTensor:
        t = self.file.tensor(name)
        data = torch.from_numpy(t.data)
        if t.ggml_type in _DENSE_TYPES and data.dtype == torch.uint8:
            data = data.view(_DENSE_TYPES[t.ggml_type])
        row_order = getattr(self.arch, "gguf_row_order", None)
        order = row_order(name, t.shape[0], self.config) if row_order else None
        if order is not None:
            data = data.reshape(t.shape[0], -1)[order]
        return RawTensor(name, t.ggml_type, t.shape, data)

    def _weight_files(self) -> list[str]:
        return [self.path]


class SafetensorsCheckpoint(Checkpoint):
    """config.json plus one or more *.safetensors files of a HF causal LM."""

    def __init__(self, path: str) -> None:
        from safetensors import safe_open

        self.path = path
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            raise ValueError(f"{path}: no config.json (not a Hugging Face checkpoint directory)")
        with open(config_path) as f:
            hf_config = json.load(f)
        self.arch = models.for_hf(hf_config.get("architectures") or [])
        self.config = self.arch.config_from_hf(hf_config)
        self._files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not self._files:
            raise ValueError(f"{path}: no *.safetensors files")
        self._where: dict[str, str] = {}
        for file in self._files:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    self._where[key] = file
        self._gguf_to_hf = self._name_map()

    def _name_map(self) -> dict[str, str]:
        mapping = {}
        for gguf_pattern, hf_pattern in self.arch.HF_TENSOR_NAMES.items():
            if "{i}" in gguf_pattern:
                for i in range(self.config.num_layers):
                    mapping[gguf_pattern.format(i=i)] = hf_pattern.format(i=i)
            else:
                mapping[gguf_pattern] = hf_pattern
        return {g: h for g, h in mapping.items() if h in self._where}

    def has(self, name: str) -> bool:
        return name in self._gguf_to_hf

    def raw(self, name: str) -> RawTensor:
        from safetensors import safe_open

        if name not in self._gguf_to_hf:
            raise KeyError(f"{self.path}: no tensor for {name!r}")
        hf_name = self._gguf_to_hf[name]
        with safe_open(self._where[hf_name], framework="pt") as f:
            tensor = f.get_tensor(hf_name)
        transform = getattr(self.arch, "hf_tensor_transform", None)
        if transform is not None:
            tensor = transform(name, tensor)
        ggml_type = {torch.float16: GGMLQuantizationType.F16,
                     torch.bfloat16: GGMLQuantizationType.BF16}.get(tensor.dtype, GGMLQuantizationType.F32)
        return RawTensor(name, ggml_type, tuple(tensor.shape), tensor if ggml_type != GGMLQuantizationType.F32
                         else tensor.float())

    def _weight_files(self) -> list[str]:
        return self._files


def open_checkpoint(path: str) -> Checkpoint:
    """A GGUF file or a HF safetensors directory, chosen by what `path` is."""
    if os.path.isdir(path):
        return SafetensorsCheckpoint(path)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            if f.read(4) == b"GGUF":
                return GGUFCheckpoint(path)
        raise ValueError(f"{path} is neither a GGUF file nor a safetensors checkpoint directory")
    raise FileNotFoundError(f"model path not found: {path}")
