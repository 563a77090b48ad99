"""Training a router: RoRF labels (generalized to N backends), a RandomForestClassifier on the
prompt embeddings, flattened into the router's forest."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from router.datasets import RoutingDataset
from router.forest import FlatForest
from router.labels import correctness_patterns, label_scheme, match_matrix
from router.policy import calibrate_threshold
from router.router import Router
from router.router_file import RouterMeta


@dataclass(frozen=True)
class ForestParams:
    """RandomForestClassifier settings. RoRF's own: 100 trees, depth 20, max_features 1.0, no
    class weights. Ours by default: sqrt(dim) features per split (~20x faster to fit), leaves of
    at least 10 prompts, and "balanced" class weights, which lift the rare "strong only right"
    class (18% of MMLU) and ranked held-out-of-train validation prompts better (bench/bench_router.py).
    NOTE: with class weights the leaf values are chances on a re-weighted scale; the threshold is
    calibrated on them, so routing is unaffected, but read them as scores, not frequencies."""

    n_estimators: int = 100
    max_depth: int | None = None
    min_samples_leaf: int = 10
    max_features: float | str = "sqrt"
    class_weight: str | None = "balanced"
    random_state: int = 0

    def __post_init__(self):
        if self.n_estimators < 1:
            raise ValueError(f"n_estimators must be >= 1, got {self.n_estimators}")
        if self.max_depth is not None and self.max_depth < 1:
            raise ValueError(f"max_depth must be >= 1 or None, got {self.max_depth}")
        if self.min_samples_leaf < 1:
            raise ValueError(f"min_samples_leaf must be >= 1, got {self.min_samples_leaf}")


def fit_forest(embeddings: np.ndarray, labels: np.ndarray, params: ForestParams, n_jobs: int = -1):
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=params.n_estimators, max_depth=params.max_depth,
                                    min_samples_leaf=params.min_samples_leaf, max_features=params.max_features,
                                    class_weight=params.class_weight, random_state=params.random_state,
                                    n_jobs=n_jobs)
    return forest.fit(np.asarray(embeddings, dtype=np.float32), labels)


def train_router(data: RoutingDataset, embeddings: np.ndarray, backends: Sequence[str], costs: Sequence[float],
                 embedder, params: ForestParams = ForestParams(), strong_share: float | None = 0.5,
                 source: str = "") -> Router:
    """A router over `backends` (any order; `costs` decide which is cheap) trained on `data`,
    whose models must include them. With strong_share, the threshold is calibrated on the training
    prompts' out-of-bag-free predictions (use `calibrate` on other prompts for an unbiased share)."""
    if len(costs) != len(backends):
        raise ValueError(f"costs must have one entry per backend, got {list(costs)} for {list(backends)}")
    if len(embeddings) != len(data):
        raise ValueError(f"embeddings has {len(embeddings)} rows for {len(data)} prompts")
    data = data.select(backends)
    labels = correctness_patterns(data.scores)
    started = time.perf_counter()
    sk_forest = fit_forest(embeddings, labels, params)
    fit_seconds = time.perf_counter() - started
    flat = FlatForest.from_sklearn(sk_forest, match_matrix(len(backends)), embedder.dim)
    meta = RouterMeta(tuple(backends), tuple(float(c) for c in costs), 0.5, label_scheme(len(backends)),
                      embedder.model, embedder.id, embedder.dim,
                      training={"data_digest": data.digest(), "num_prompts": len(data), "source": source,
                                "forest": asdict(params), "fit_seconds": round(fit_seconds, 2),
                                "class_counts": np.bincount(labels, minlength=1 << len(backends)).tolist()})
    router = Router(flat, meta, embedder)
    if strong_share is not None:
        cheapest = router.probabilities(embeddings)[:, 0]
        router = router.replace_meta(threshold=calibrate_threshold(cheapest, strong_share))
    return router
