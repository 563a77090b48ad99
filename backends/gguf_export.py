"""Quantize a GGUF file or a Hugging Face checkpoint into a GGUF file: `GGUFQuantizer`.

    job = GGUFQuantizer("model-f32.gguf", "Q4_K_M", importance=load_imatrix("imatrix.gguf"))
    job = GGUFQuantizer("SmolLM2-135M-Instruct/", "Q4_K_M")  # config.json + *.safetensors + tokenizer
    report = job.write("model-q4_k_m.gguf", progress=lambda name, weights: ...)

Every tensor of the source (any type we can read) is dequantized to float32 and re-encoded
with the type quant_mixture plans for it, or copied byte for byte when it keeps its type
(as llama-quantize does). All metadata is copied with its exact GGUF value types (llama.cpp
checks them), tokenizer included; general.file_type and general.quantization_version are set.

A Hugging Face safetensors directory (Llama family only, see backends/hf_to_gguf.py) is first
written as an unquantized GGUF in a temporary folder, as llama.cpp's convert_hf_to_gguf.py would
write it (GGUF names, llama.cpp's Q/K row order, hyperparameters, tokenizer), and quantized from
there; the temporary file lives as long as the job.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from backends.gguf_file import GGUFFile, GGUFTensor
from backends.hf_to_gguf import write_unquantized_gguf
from backends.quantization import dequantize, resolve_format
from backends.quantization.quant_mixture import Mixture, TensorSpec, plan_tensor_types, resolve_mixture
from backends.quantization.quantizer import quantize_tensor

# Keys the writer sets itself (or that describe the old encoding).
_OWN_KEYS = {"general.architecture", "general.file_type", "general.quantization_version"}
_QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION of the block layouts written here
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8",
          11: "<i8", 12: "<f8"}


@dataclass(frozen=True)
class TypedValue:
    """A metadata value with the GGUF types it was stored with."""

    value: Any  # int/float/bool, bytes for a string, or a list of those
    vtype: GGUFValueType
    sub_type: GGUFValueType | None = None  # item type of an array


def read_typed_metadata(path: str) -> dict[str, TypedValue]:
    """The header key/values of a GGUF file, keeping value types (GGUFFile drops them).

    Strings stay bytes, so they are copied exactly even when not valid UTF-8.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (bad magic)")
        pos = 8
        _, num_kv = struct.unpack_from("<QQ", buf, pos)
        pos += 16

        def string(at: int) -> tuple[bytes, int]:
            (n,) = struct.unpack_from("<Q", buf, at)
            return buf[at + 8: at + 8 + n], at + 8 + n

        def value(vtype: int, at: int) -> tuple[Any, int]:
            if vtype in _SCALARS:
                return struct.unpack_from("<" + _SCALARS[vtype], buf, at)[0], at + struct.calcsize(_SCALARS[vtype])
            if vtype == GGUFValueType.STRING:
                return string(at)
            raise ValueError(f"{path}: unexpected GGUF value type {vtype} at byte {at}")

        out: dict[str, TypedValue] = {}
        for _ in range(num_kv):
            key, pos = string(pos)
            (vtype,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            if vtype == GGUFValueType.ARRAY:
                item_type, count = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                if item_type in _NUMPY:
                    # NOTE: no name may hold the array: a live view would keep the map open.
                    values = np.frombuffer(buf, dtype=_NUMPY[item_type], count=count, offset=pos).tolist()
                    pos += count * np.dtype(_NUMPY[item_type]).itemsize
                else:
                    values = []
                    for _ in range(count):
                        item, pos = value(item_type, pos)
                        values.append(item)
                out[key.decode()] = TypedValue(values, GGUFValueType.ARRAY, GGUFValueType(item_type))
            else:
                item, pos = value(vtype, pos)
                out[key.decode()] = TypedValue(item, GGUFValueType(vtype))
        return out


def writer_with_metadata_of(source: GGUFFile, dest: str) -> GGUFWriter:
    """A GGUFWriter for `dest` holding every key of `source` but the encoding ones.

    The caller adds general.file_type, the tensors, and writes the file.
    """
    metadata = read_typed_metadata(source.path)
    writer = GGUFWriter(dest, source.architecture)
    if "general.alignment" in metadata:
        writer.data_alignment = int(metadata["general.alignment"].value)
    for key, typed in metadata.items():
        if key not in _OWN_KEYS:
            writer.add_key_value(key, typed.value, typed.vtype, typed.sub_type)
    return writer


@dataclass(frozen=True)
class ExportReport:
    """What GGUFQuantizer.write produced."""

    path: str
    tensor_types: dict[str, str]  # tensor name -> GGML type written
    num_requantized: int  # tensors decoded and encoded anew
    num_copied: int  # tensors copied byte for byte
    file_size: int  # bytes


def dense_tensor(tensor: GGUFTensor) -> np.ndarray:
    """The tensor as float32 in its logical shape."""
    if tensor.data.dtype != np.uint8:
        return np.asarray(tensor.data, dtype=np.float32)
    return dequantize(torch.from_numpy(np.asarray(tensor.data)), tensor.ggml_type, tensor.shape).numpy()


class GGUFQuantizer:
    """One quantization job: a source GGUF, a mixture, an optional importance matrix."""

    def __init__(self, source: str | os.PathLike[str], mixture: str | Mixture,
                 importance: dict[str, np.ndarray] | None = None) -> None:
        source = os.fspath(source)
        self._converted: tempfile.TemporaryDirectory[str] | None = None
        if os.path.isdir(source):
            self._converted = tempfile.TemporaryDirectory(prefix="routegate-convert-")
            converted = os.path.join(self._converted.name, "unquantized.gguf")
            write_unquantized_gguf(source, converted)
            source = converted
        self.source = GGUFFile(source)
        self.mixture = mixture if isinstance(mixture, Mixture) else resolve_mixture(mixture)
        self.importance = importance or {}
        specs = [TensorSpec(t.name, t.shape) for t in self.source.tensors.values()]
        self.plan = plan_tensor_types(specs, self.mixture, has_imatrix=bool(self.importance))
        for name in self.requantized():  # fail before writing anything on a type we cannot decode
            resolve_format(self.source.tensors[name].ggml_type)

    def target_type(self, name: str) -> GGMLQuantizationType:
        """What `name` will be written as (its own type when the plan keeps it)."""
        return self.plan[name] or self.source.tensors[name].ggml_type

    def requantized(self) -> list[str]:
        """Names of the tensors that will be re-encoded (the rest are copied)."""
        return [n for n, t in self.source.tensors.items() if self.target_type(n) != t.ggml_type]

    @property
    def total_weights(self) -> int:
        """Weights to re-encode: the unit of `write`'s progress callback."""
        return sum(int(np.prod(self.source.tensors[n].shape)) for n in self.requantized())

    def write(self, dest: str | os.PathLike[str],
              progress: Callable[[str, int], None] | None = None) -> ExportReport:
        """Write the quantized file; progress(tensor name, weights just finished)."""
        dest = os.fspath(dest)
        if os.path.abspath(dest) == os.path.abspath(self.source.path):
            raise ValueError(f"output must differ from the input file, got {dest} for both")
        folder = os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(folder):  # before minutes of work, not after
            raise FileNotFoundError(f"output folder does not exist: {folder}")
        writer = writer_with_metadata_of(self.source, dest)
        writer.add_file_type(int(self.mixture.file_type))
        writer.add_quantization_version(_QUANTIZATION_VERSION)

        to_encode = set(self.requantized())
        types: dict[str, str] = {}
        for name, tensor in self.source.tensors.items():
            target = self.target_type(name)
            types[name] = target.name
            if name not in to_encode:
                data = np.asarray(tensor.data)
                writer.add_tensor(name, data, raw_dtype=tensor.ggml_type if data.dtype == np.uint8 else None)
                continue
            cols = tensor.shape[-1]

            def advance(rows: int, name: str = name, cols: int = cols) -> None:
                if progress is not None:
                    progress(name, rows * cols)

            encoded = quantize_tensor(dense_tensor(tensor), target, self.importance.get(name), progress=advance)
            encoded = encoded.reshape(*tensor.shape[:-1], encoded.shape[-1])
            writer.add_tensor(name, encoded, raw_dtype=target if encoded.dtype == np.uint8 else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return ExportReport(dest, types, len(to_encode), len(types) - len(to_encode), os.path.getsize(dest))
