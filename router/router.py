"""The Router: embed a query, run the flat forest, apply the cheapest-that-clears rule."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from router.forest import FlatForest
from router.policy import RouteDecision, check_threshold, choose
from router.router_file import RouterMeta, load_router_file, save_router_file


class Router:
    """Routes a text to one of `backends` (cheapest first). Load with Router.load(path)."""

    def __init__(self, forest: FlatForest, meta: RouterMeta, embedder=None):
        if forest.num_features != meta.embedder_dim:
            raise ValueError(f"forest expects {forest.num_features} features, the embedder gives {meta.embedder_dim}")
        self.forest = forest
        self.meta = meta
        # Forest outputs are in meta.backends order; route in cost order (stable for equal costs).
        self._order = np.argsort(np.asarray(meta.costs), kind="stable")
        self._backends = tuple(meta.backends[i] for i in self._order)
        self._embedder = embedder
        if embedder is not None:
            self._check_embedder(embedder)

    @classmethod
    def load(cls, path: str | Path, costs: Mapping[str, float] | None = None, embedder=None) -> "Router":
        """Read a router file (never unpickled); `costs` override the file's per-backend costs.
        The embedder the file names is loaded on first use (or pass one to share it)."""
        forest, meta = load_router_file(path)
        if costs:
            unknown = sorted(set(costs) - set(meta.backends))
            if unknown:
                raise ValueError(f"costs name unknown backends {unknown}; the router has {list(meta.backends)}")
            meta = dataclasses.replace(meta, costs=tuple(float(costs.get(b, c)) for b, c in zip(meta.backends, meta.costs)))
        return cls(forest, meta, embedder)

    def save(self, path: str | Path) -> None:
        save_router_file(path, self.forest, self.meta)

    @property
    def backends(self) -> tuple[str, ...]:
        """Backend names, cheapest first."""
        return self._backends

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    @property
    def costs(self) -> dict[str, float]:
        return dict(zip(self.meta.backends, self.meta.costs))

    def replace_meta(self, **changes) -> "Router":
        """A copy with some metadata changed (threshold, metrics), sharing forest and embedder."""
        return Router(self.forest, dataclasses.replace(self.meta, **changes), self._embedder)

    @property
    def embedder(self):
        if self._embedder is None:
            from router.embedder import Embedder

            embedder = Embedder(self.meta.embedder_model)
            self._check_embedder(embedder)
            self._embedder = embedder
        return self._embedder

    def _check_embedder(self, embedder) -> None:
        if embedder.id != self.meta.embedder_id or embedder.dim != self.meta.embedder_dim:
            raise ValueError(f"router was trained on embedder {self.meta.embedder_id} (dim {self.meta.embedder_dim}), "
                             f"got {embedder.id} (dim {embedder.dim})")

    def warm_up(self) -> None:
        """Load the embedder and route once, so the first real query pays no start-up."""
        self.route("warm up")

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """[num_rows, num_backends] chances of matching the best backend, in `backends` order."""
        return self.forest.predict(embeddings)[:, self._order]

    def route(self, text: str, threshold: float | None = None) -> RouteDecision:
        t = self.threshold if threshold is None else check_threshold(threshold)
        if not isinstance(text, str) or not text:
            raise ValueError("text must be a non-empty string")
        embedder = self.embedder
        start = time.perf_counter()
        probs = self.forest.predict_one(embedder.embed_one(text))[self._order]
        index = int(choose(probs, t)[0])
        latency_ms = (time.perf_counter() - start) * 1e3
        return RouteDecision(self._backends[index], dict(zip(self._backends, probs.tolist())),
                             float(probs[0]), t, latency_ms)

    def route_batch(self, texts: Sequence[str], threshold: float | None = None) -> list[RouteDecision]:
        """Embeds all texts in one batch; each decision carries the batch's time per text."""
        t = self.threshold if threshold is None else check_threshold(threshold)
        if not texts:
            return []
        embedder = self.embedder
        start = time.perf_counter()
        probs = self.probabilities(embedder.embed(list(texts)))
        chosen = choose(probs, t)
        per_text_ms = (time.perf_counter() - start) * 1e3 / len(texts)
        return [RouteDecision(self._backends[i], dict(zip(self._backends, row.tolist())), float(row[0]), t, per_text_ms)
                for i, row in zip(chosen.tolist(), probs)]
