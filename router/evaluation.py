"""Evaluating a router on labeled prompts: its RouteLLM curve and metrics next to a random
router's and the oracle's."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router.datasets import RoutingDataset
from router.metrics import CurvePoint, RoutingMetrics, evaluate_win_rates, oracle_curve, summarize
from router.policy import choose

RANDOM_SEEDS = 10  # the random reference is averaged over this many draws


@dataclass(frozen=True)
class Evaluation:
    router: RoutingMetrics
    random_apgr: float  # mean over RANDOM_SEEDS random routers
    random_cpt50: float
    oracle: RoutingMetrics
    weak: str  # the cheapest backend
    strong: str  # the most expensive backend (its quality is the "strong" line)

    def as_dict(self) -> dict:
        return {**self.router.as_dict(), "random_apgr": self.random_apgr, "random_cpt50": self.random_cpt50,
                "oracle_apgr": self.oracle.apgr, "oracle_cpt50": self.oracle.cpt50, "oracle_cpt80": self.oracle.cpt80}

    def curves(self) -> dict[str, list[CurvePoint]]:
        return {"router": list(self.router.points), "oracle": list(self.oracle.points)}


def outcomes(probs: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(strong win rate, quality kept on the cheapest backend, quality when escalated) per prompt.
    probs and scores are [num_prompts, num_backends], cheapest first. With more than two backends an
    escalated prompt goes where the policy sends it at `threshold` among the non-cheapest ones."""
    escalated = scores[:, -1] if scores.shape[1] == 2 else \
        scores[np.arange(len(scores)), 1 + choose(probs[:, 1:], threshold)]
    return 1.0 - probs[:, 0], scores[:, 0], escalated


def evaluate_router(probs: np.ndarray, data: RoutingDataset, backends: tuple[str, ...], threshold: float,
                    num_results: int = 10) -> Evaluation:
    """probs from router.probabilities(embeddings of data.prompts); backends cheapest first."""
    scores = data.select(backends).scores
    win_rates, weak, escalated = outcomes(probs, scores, threshold)
    metrics = evaluate_win_rates(win_rates, weak, escalated, num_results)
    strong_quality = float(scores[:, -1].mean())
    if scores.shape[1] > 2:  # the reference line is the most expensive backend, not the mix
        metrics = summarize(list(metrics.points), float(weak.mean()), strong_quality)
    rng = np.random.default_rng(0)
    randoms = [summarize(list(evaluate_win_rates(rng.random(len(weak)), weak, escalated, num_results).points),
                         float(weak.mean()), strong_quality) for _ in range(RANDOM_SEEDS)]
    oracle = summarize(oracle_curve(weak, escalated, num_results), float(weak.mean()), strong_quality)
    return Evaluation(metrics, float(np.mean([r.apgr for r in randoms])), float(np.mean([r.cpt50 for r in randoms])),
                      oracle, backends[0], backends[-1])
