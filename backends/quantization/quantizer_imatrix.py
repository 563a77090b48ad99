"""Read an importance matrix (llama-imatrix's output) into per-tensor column weights.

    importance = load_imatrix("imatrix.gguf")   # {"blk.0.attn_q.weight": float32 [cols], ...}

Two file formats, told apart by their first bytes:
  - GGUF (llama-imatrix's default today): tensors "<name>.in_sum2" (sum of squared
    activations per column) and "<name>.counts" (how many were summed); the weight is
    in_sum2 / counts, as llama-quantize computes it.
  - the legacy binary ".dat": int32 entry count, then per entry int32 name length, name,
    int32 ncall, int32 nval, float32 values[nval]; the weight is values / ncall.
For expert tensors (several matrices per name) only the first matrix's weights are kept:
the mixtures here cover dense models.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from backends.gguf_file import GGUFFile

_SUM2, _COUNTS = ".in_sum2", ".counts"


def load_imatrix(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Column weights per tensor name; ValueError for files that are neither format."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"imatrix file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    return _load_gguf(path) if magic == b"GGUF" else _load_legacy(path)


def _load_gguf(path: str) -> dict[str, np.ndarray]:
    file = GGUFFile(path)
    out = {}
    for name, tensor in file.tensors.items():
        if not name.endswith(_SUM2):
            continue
        base = name[: -len(_SUM2)]
        counts = file.tensors.get(base + _COUNTS)
        if counts is None:
            raise ValueError(f"{path}: {name} has no matching {base + _COUNTS}")
        sums = np.asarray(tensor.data, dtype=np.float32).reshape(-1, tensor.shape[-1])[0]
        count = float(np.asarray(counts.data, dtype=np.float32).reshape(-1)[0])
        out[base] = sums / count if count > 0 else np.ones_like(sums)
    if not out:
        raise ValueError(f"{path}: a GGUF file without any '*{_SUM2}' tensor is not an imatrix")
    return out


def _load_legacy(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        data = f.read()
    try:
        (num_entries,), pos = struct.unpack_from("<i", data, 0), 4
        if num_entries <= 0:
            raise ValueError(f"entry count {num_entries}")
        out = {}
        for _ in range(num_entries):
            (name_len,) = struct.unpack_from("<i", data, pos)
            name = data[pos + 4: pos + 4 + name_len].decode("utf-8")
            pos += 4 + name_len
            ncall, nval = struct.unpack_from("<ii", data, pos)
            pos += 8
            if nval <= 0 or pos + 4 * nval > len(data):
                raise ValueError(f"entry {name!r} claims {nval} values")
            values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
            pos += 4 * nval
            out[name] = values / ncall if ncall > 0 else values
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable imatrix file (GGUF or legacy .dat): {exc}") from exc
    return out
