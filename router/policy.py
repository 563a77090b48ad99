"""The routing rule, pure numpy: backends are ordered cheapest first, each with a predicted chance
of answering as well as the best backend; the cheapest backend whose chance clears the threshold
answers, and the most expensive one answers when none does.

With two backends [weak, strong] that is RoRF's rule on one score: weak when P(weak matches the
best) = 1 - P(strong only right) >= threshold, strong otherwise. Whatever N, a call leaves the
cheapest backend exactly when its chance is below the threshold, so calibrating the threshold to a
share of "strong" (non-cheapest) calls is a quantile of that one number."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class RouteDecision:
    backend: str  # the chosen backend
    probabilities: Mapping[str, float]  # per backend: predicted chance it answers as well as the best backend
    score: float  # the cheapest backend's chance: what the threshold is compared with first
    threshold: float  # the threshold used
    latency_ms: float  # embedding + forest time


def choose(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Index of the chosen backend per row. probs [num_rows, num_backends], cheapest first."""
    probs = np.atleast_2d(probs)
    clears = probs >= threshold
    clears[:, -1] = True  # the most expensive backend takes what no cheaper one clears
    return clears.argmax(axis=1)


def calibrate_threshold(cheapest_probs: np.ndarray, strong_share: float) -> float:
    """A threshold that sends round(strong_share * n) of these prompts past the cheapest backend
    (fewer when tied chances make that exact share impossible). Midpoints between neighbouring
    chances keep the share stable on new prompts near the boundary."""
    if not 0.0 <= strong_share <= 1.0:
        raise ValueError(f"strong_share must be in [0, 1], got {strong_share}")
    p = np.sort(np.asarray(cheapest_probs, dtype=np.float64))
    if len(p) == 0:
        raise ValueError("calibration needs at least one prompt")
    k = int(round(strong_share * len(p)))
    if k == 0:
        return float(p[0])  # nothing is strictly below the smallest chance
    if k == len(p):
        return float(np.nextafter(p[-1], np.inf))
    if p[k - 1] == p[k]:
        return float(p[k])  # ties: everything strictly below p[k] escalates (fewer than k)
    return float((p[k - 1] + p[k]) / 2)


def check_threshold(threshold: float) -> float:
    if not isinstance(threshold, (int, float)) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    return float(threshold)
