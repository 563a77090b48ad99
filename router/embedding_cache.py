"""An on-disk cache of sentence embeddings keyed by embedder id and text, so training and
evaluation embed each prompt once (embedding ~10k prompts takes minutes on two cores)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Sequence

import numpy as np


class EmbeddingCache:
    """A SQLite file mapping sha256(model_id, text) to a float32 vector.

    SQLite (stdlib) gives atomic writes and safe concurrent readers; the values are raw
    float32 bytes, never pickles, so a cache file from elsewhere cannot run code."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path))
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (key BLOB PRIMARY KEY, dim INTEGER, vec BLOB)")
        self._db.commit()

    @staticmethod
    def key(model_id: str, text: str) -> bytes:
        return hashlib.sha256(model_id.encode() + b"\0" + text.encode("utf-8", "surrogatepass")).digest()

    def get_many(self, model_id: str, texts: Sequence[str], dim: int) -> list[np.ndarray | None]:
        """The cached vector of each text, or None where missing (or stored with another dim)."""
        keys = [self.key(model_id, t) for t in texts]
        found: dict[bytes, np.ndarray] = {}
        # NOTE: SQLite limits bound parameters per statement (999 on old builds): query in chunks.
        for start in range(0, len(keys), 500):
            chunk = list(dict.fromkeys(keys[start:start + 500]))
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, dim, vec FROM emb WHERE key IN ({marks})", chunk)
            for key, row_dim, vec in rows:
                if row_dim == dim and len(vec) == 4 * dim:
                    found[key] = np.frombuffer(vec, dtype=np.float32)
        return [found.get(k) for k in keys]

    def put_many(self, model_id: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise ValueError(f"vectors must be [len(texts), dim], got {vectors.shape} for {len(texts)} texts")
        rows = [(self.key(model_id, t), vectors.shape[1], v.tobytes()) for t, v in zip(texts, vectors)]
        self._db.executemany("INSERT OR REPLACE INTO emb (key, dim, vec) VALUES (?, ?, ?)", rows)
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM emb").fetchone()[0]

    def close(self) -> None:
        self._db.close()
