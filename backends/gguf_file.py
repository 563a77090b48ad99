"""A memory-mapped GGUF file: metadata and tensor table, through the `gguf` package's reader."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file; `data` is a view into the memory map, nothing is copied."""

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]  # torch order: (rows, cols) for a matrix; cols is ggml's ne[0]
    data: np.ndarray  # raw bytes [rows, bytes_per_row] for block formats, else typed values

    @property
    def num_bytes(self) -> int:
        return int(self.data.nbytes)


class GGUFFile:
    """Metadata and tensors of one GGUF file. Tensors stay memory-mapped until converted."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"GGUF file not found: {self.path}")
        try:
            # Copy-on-write map: tensors view the file without copies and torch accepts them as writable.
            self._reader = GGUFReader(self.path, "c")
        except (ValueError, OSError) as exc:
            raise ValueError(f"{self.path} is not a readable GGUF file: {exc}") from exc
        self.metadata: dict[str, Any] = {
            name: _field_value(field) for name, field in self._reader.fields.items()
            if not name.startswith("GGUF.")
        }
        self.tensors: dict[str, GGUFTensor] = {}
        for t in self._reader.tensors:
            shape = tuple(int(n) for n in reversed(t.shape.tolist()))
            self.tensors[t.name] = GGUFTensor(t.name, GGMLQuantizationType(int(t.tensor_type)), shape, t.data)

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ValueError(f"{self.path}: metadata has no general.architecture")
        return arch

    @property
    def file_size(self) -> int:
        return os.path.getsize(self.path)

    def arch_key(self, key: str, default: Any = None) -> Any:
        """Metadata value `<architecture>.<key>`, e.g. arch_key("block_count")."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def require(self, key: str) -> Any:
        full = f"{self.architecture}.{key}"
        if full not in self.metadata:
            raise ValueError(f"{self.path}: metadata key {full!r} is missing")
        return self.metadata[full]

    def tensor(self, name: str) -> GGUFTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None


def _field_value(field: Any) -> Any:
    """Turn a reader field into a plain Python value (str, int, float, bool or list of them)."""
    types = field.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        item_type = types[-1]
        if item_type == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        values = [field.parts[i] for i in field.data]
        if not values:
            return []
        return np.concatenate(values).tolist()
    part = field.parts[field.data[0]]
    if types[0] == GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    value = part.tolist()[0] if len(part) == 1 else part.tolist()
    return bool(value) if types[0] == GGUFValueType.BOOL else value
