"""A memory-mapped GGUF file: metadata and tensor table.

Our own parser of the GGUF v2/v3 header (the layout in ggml's docs/gguf.md): the `gguf`
package's reader builds a numpy object per array element and took ~20 s on Gemma's 262,144
token strings, against ~0.3 s here. Tensor data stays in a copy-on-write memory map.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

_MAGIC = b"GGUF"
_SCALARS = {  # GGUF value type -> struct format
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d",
}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9
_DENSE_NUMPY = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file; `data` is a view into the memory map, nothing is copied."""

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]  # torch order: (rows, cols) for a matrix; cols is ggml's ne[0]
    data: np.ndarray  # F32/F16 values in `shape`, else raw bytes [rows, bytes_per_row]

    @property
    def num_bytes(self) -> int:
        return int(self.data.nbytes)


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str) -> Any:
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("Q")
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.scalar("I"), self.scalar("Q")
            if item_type in _NUMPY:
                dtype = np.dtype(_NUMPY[item_type]).newbyteorder("<")
                values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
                self.pos += count * dtype.itemsize
                return values.tolist()
            return [self.value(item_type) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {vtype} at byte {self.pos}")


class GGUFFile:
    """Metadata and tensors of one GGUF file. Tensors stay memory-mapped until converted."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"GGUF file not found: {self.path}")
        with open(self.path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.metadata, infos, data_start = self._parse(buf)
        except (struct.error, UnicodeDecodeError, ValueError, IndexError) as exc:
            raise ValueError(f"{self.path} is not a readable GGUF file: {exc}") from exc
        finally:
            buf.close()
        # Copy-on-write: tensors view the file without copies and torch accepts them as writable.
        self._map = np.memmap(self.path, dtype=np.uint8, mode="c")
        self.tensors: dict[str, GGUFTensor] = {}
        for name, dims, ggml_type, offset in infos:
            self.tensors[name] = self._tensor(name, dims, ggml_type, data_start + offset)

    def _parse(self, buf: mmap.mmap) -> tuple[dict[str, Any], list, int]:
        cur = _Cursor(buf)
        if buf[:4] != _MAGIC:
            raise ValueError("bad magic (not a GGUF file)")
        cur.pos = 4
        version = cur.scalar("I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
        num_tensors, num_kv = cur.scalar("Q"), cur.scalar("Q")
        metadata: dict[str, Any] = {}
        for _ in range(num_kv):
            key = cur.string()
            metadata[key] = cur.value(cur.scalar("I"))
        infos = []
        for _ in range(num_tensors):
            name = cur.string()
            dims = [cur.scalar("Q") for _ in range(cur.scalar("I"))]
            infos.append((name, dims, GGMLQuantizationType(cur.scalar("I")), cur.scalar("Q")))
        alignment = int(metadata.get("general.alignment", 32))
        data_start = -(-cur.pos // alignment) * alignment
        return metadata, infos, data_start

    def _tensor(self, name: str, dims: list[int], ggml_type: GGMLQuantizationType, start: int) -> GGUFTensor:
        shape = tuple(int(d) for d in reversed(dims))
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        if dims[0] % block_size:
            raise ValueError(f"{self.path}: tensor {name} row of {dims[0]} is not a multiple of "
                             f"{ggml_type.name} blocks ({block_size})")
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        row_bytes = dims[0] // block_size * type_size
        end = start + rows * row_bytes
        if end > self._map.size:
            raise ValueError(f"{self.path}: tensor {name} runs past the end of the file")
        raw = self._map[start:end]
        if ggml_type in _DENSE_NUMPY:
            data = raw.view(_DENSE_NUMPY[ggml_type]).reshape(shape)
        else:
            data = raw.reshape(rows, row_bytes)
        return GGUFTensor(name, ggml_type, shape, data)

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
