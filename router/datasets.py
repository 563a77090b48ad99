"""Routing data: prompts with one quality score per backend, read from RouteLLM's eval CSV layout
(`prompt,<model>,<model>` with True/False), RoRF's layout (`Input`, `<model>/score`) or JSONL
(`{"prompt": ..., "scores": {"<model>": 0.0..1.0}}`, what `routegate router label` writes)."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

RORF_PROMPT = "Input"
RORF_SCORE_SUFFIX = "/score"
_TRUE = {"true": 1.0, "1": 1.0, "yes": 1.0, "false": 0.0, "0": 0.0, "no": 0.0}

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # MMLU passages run past csv's 128 KiB default


@dataclass(frozen=True)
class RoutingDataset:
    """prompts[i] was answered by every model; scores[i, j] is model j's quality on it in [0, 1]."""

    prompts: tuple[str, ...]
    models: tuple[str, ...]
    scores: np.ndarray  # [num_prompts, num_models] float64

    def __post_init__(self):
        if self.scores.shape != (len(self.prompts), len(self.models)):
            raise ValueError(f"scores must be [{len(self.prompts)}, {len(self.models)}], got {self.scores.shape}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be unique, got {self.models}")
        if np.isnan(self.scores).any() or (self.scores < 0).any() or (self.scores > 1).any():
            raise ValueError("scores must be numbers in [0, 1]")

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, models: Sequence[str]) -> "RoutingDataset":
        """The same prompts with only `models`, in that order."""
        missing = [m for m in models if m not in self.models]
        if missing:
            raise ValueError(f"models {missing} not in the data; it has {list(self.models)}")
        cols = [self.models.index(m) for m in models]
        return RoutingDataset(self.prompts, tuple(models), self.scores[:, cols])

    def subset(self, rows: Sequence[int] | np.ndarray) -> "RoutingDataset":
        rows = np.asarray(rows, dtype=np.int64)
        return RoutingDataset(tuple(self.prompts[i] for i in rows), self.models, self.scores[rows])

    def digest(self) -> str:
        """sha256 of prompts, model names and scores: names the exact training data in a router file."""
        h = hashlib.sha256()
        h.update(json.dumps(self.models).encode())
        for p in self.prompts:
            h.update(hashlib.sha256(p.encode("utf-8", "surrogatepass")).digest())
        h.update(np.ascontiguousarray(self.scores, dtype="<f8").tobytes())
        return h.hexdigest()


def load_dataset(path: str | Path) -> RoutingDataset:
    """A .jsonl file, a .csv file (RouteLLM or RoRF layout, told apart by the header) or a
    directory of RouteLLM CSVs with the same model columns (RouteLLM's mmlu/responses)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise ValueError(f"data: no .csv files in directory {path}")
        parts = [load_csv(f) for f in files]
        models = parts[0].models
        for f, part in zip(files, parts):
            if part.models != models:
                raise ValueError(f"data: {f} has models {part.models}, {files[0]} has {models}")
        return RoutingDataset(tuple(p for part in parts for p in part.prompts), models,
                              np.concatenate([part.scores for part in parts]))
    if not path.is_file():
        raise ValueError(f"data: {path} does not exist")
    if path.suffix == ".jsonl":
        return load_jsonl(path)
    return load_csv(path)


def load_csv(path: str | Path) -> RoutingDataset:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: empty CSV")
        rows = list(reader)
    if header[0] == "prompt":  # RouteLLM: prompt,<model>,<model>,... with True/False
        models, prompt_col, cols = tuple(header[1:]), 0, list(range(1, len(header)))
    elif RORF_PROMPT in header:  # RoRF: Input, <model>/score (other columns ignored)
        prompt_col = header.index(RORF_PROMPT)
        cols = [i for i, h in enumerate(header) if h.endswith(RORF_SCORE_SUFFIX)]
        models = tuple(header[i][: -len(RORF_SCORE_SUFFIX)] for i in cols)
    else:
        raise ValueError(f"{path}: header must start with 'prompt' (RouteLLM) or contain 'Input' (RoRF), got {header[:4]}")
    if len(models) < 2:
        raise ValueError(f"{path}: need at least two model columns, got {list(models)}")
    scores = np.zeros((len(rows), len(models)))
    for r, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"{path}: row {r + 2} has {len(row)} fields, the header {len(header)}")
        for j, c in enumerate(cols):
            scores[r, j] = _score(row[c], f"{path}: row {r + 2}, column {header[c]!r}")
    return RoutingDataset(tuple(row[prompt_col] for row in rows), models, scores)


def load_jsonl(path: str | Path) -> RoutingDataset:
    prompts, records = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not isinstance(obj.get("scores"), dict):
                raise ValueError(f"{path}: line {n}: need {{'prompt': str, 'scores': {{model: score}}}}")
            prompts.append(obj["prompt"])
            records.append(obj["scores"])
    if not records:
        raise ValueError(f"{path}: no records")
    models = tuple(records[0])
    scores = np.zeros((len(records), len(models)))
    for r, rec in enumerate(records):
        if set(rec) != set(models):
            raise ValueError(f"{path}: record {r + 1} scores models {sorted(rec)}, the first {sorted(models)}")
        for j, m in enumerate(models):
            scores[r, j] = _score(rec[m], f"{path}: record {r + 1}, model {m!r}")
    return RoutingDataset(tuple(prompts), models, scores)


def _score(value, where: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE:
        return _TRUE[value.strip().lower()]
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: score must be True/False or a number in [0, 1], got {value!r}") from None
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"{where}: score must be in [0, 1], got {x}")
    return x
