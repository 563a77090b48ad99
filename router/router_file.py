"""The router file: a .npz (zip of .npy arrays) read with allow_pickle=False, so loading a file
from anywhere runs no code. The forest is flat arrays; everything else is one JSON document.

    meta.npy        uint8, UTF-8 JSON: format, version, backends, costs, threshold, label scheme,
                    embedder {model, id, dim}, training {digest, num_prompts, source, forest}, metrics
    roots/left/right/feature/threshold/value.npy    the FlatForest arrays
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router.forest import FlatForest

FORMAT = "routegate-router"
VERSION = 1
_ARRAYS = ("roots", "left", "right", "feature", "threshold", "value")


@dataclass(frozen=True)
class RouterMeta:
    backends: tuple[str, ...]  # in the forest's output order
    costs: tuple[float, ...]  # per backend, same order; the router prefers lower cost
    threshold: float
    label_scheme: str
    embedder_model: str  # "bundled:all-MiniLM-L6-v2" or a directory
    embedder_id: str  # name@digest of the weights the forest was trained on
    embedder_dim: int
    training: dict[str, Any] = field(default_factory=dict)  # digest, num_prompts, source, forest params
    metrics: dict[str, Any] = field(default_factory=dict)  # evaluation results, by data set name

    def __post_init__(self):
        if len(self.backends) < 2 or len(set(self.backends)) != len(self.backends):
            raise ValueError(f"backends must be at least two unique names, got {self.backends}")
        if len(self.costs) != len(self.backends):
            raise ValueError(f"costs must have one entry per backend, got {self.costs} for {self.backends}")
        if any(not isinstance(c, (int, float)) or not np.isfinite(c) or c < 0 for c in self.costs):
            raise ValueError(f"costs must be finite numbers >= 0, got {self.costs}")
        if not isinstance(self.threshold, (int, float)) or not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}")
        if not isinstance(self.embedder_dim, int) or self.embedder_dim <= 0:
            raise ValueError(f"embedder_dim must be a positive integer, got {self.embedder_dim!r}")

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "backends": list(self.backends),
                "costs": list(self.costs), "threshold": self.threshold, "label_scheme": self.label_scheme,
                "embedder": {"model": self.embedder_model, "id": self.embedder_id, "dim": self.embedder_dim},
                "training": self.training, "metrics": self.metrics}

    @classmethod
    def from_json(cls, doc: Any) -> "RouterMeta":
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"router file: meta.format must be {FORMAT!r}")
        if doc.get("version") != VERSION:
            raise ValueError(f"router file: version {doc.get('version')!r} is not supported (want {VERSION})")
        try:
            emb = doc["embedder"]
            return cls(tuple(str(b) for b in doc["backends"]), tuple(float(c) for c in doc["costs"]),
                       float(doc["threshold"]), str(doc["label_scheme"]), str(emb["model"]), str(emb["id"]),
                       int(emb["dim"]), dict(doc.get("training", {})), dict(doc.get("metrics", {})))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"router file: meta is missing or mistypes {exc}") from None


def save_router_file(path: str | Path, forest: FlatForest, meta: RouterMeta) -> None:
    if forest.value.shape[1] != len(meta.backends):
        raise ValueError(f"forest has {forest.value.shape[1]} outputs for {len(meta.backends)} backends")
    doc = json.dumps(meta.to_json(), sort_keys=True).encode()
    arrays = {name: getattr(forest, name) for name in _ARRAYS}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
        np.savez_compressed(f, meta=np.frombuffer(doc, dtype=np.uint8), **arrays)


def load_router_file(path: str | Path) -> tuple[FlatForest, RouterMeta]:
    """Read and check a router file; anything else (a pickle, object arrays, bad indices) is refused
    with a ValueError before any of it is used."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"router file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"router file {path} is not a routegate router (not a .npz archive); refused")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            if names != {"meta", *_ARRAYS}:
                raise ValueError(f"router file {path}: arrays {sorted(names)}, want {sorted({'meta', *_ARRAYS})}")
            data = {name: npz[name] for name in names}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        # numpy raises ValueError for object (pickled) arrays when allow_pickle=False.
        raise ValueError(f"router file {path} refused: {exc}") from None
    if data["meta"].dtype != np.uint8 or data["meta"].ndim != 1:
        raise ValueError(f"router file {path}: meta must be UTF-8 bytes")
    try:
        meta = RouterMeta.from_json(json.loads(data["meta"].tobytes().decode()))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"router file {path}: meta is not JSON: {exc}") from None
    forest = FlatForest.checked(*(data[name] for name in _ARRAYS), num_features=meta.embedder_dim)
    if forest.value.shape[1] != len(meta.backends):
        raise ValueError(f"router file {path}: forest has {forest.value.shape[1]} outputs, meta {len(meta.backends)} backends")
    if ((forest.value < 0) | (forest.value > 1)).any():
        raise ValueError(f"router file {path}: forest values must be probabilities in [0, 1]")
    return forest, meta
