"""Training labels. RoRF's four classes for two backends, generalized to N backends as the
pattern of which backends answered right, and what each class says about every backend.

A backend "matches the best" on a prompt when it is right, or when every backend is wrong (then
no backend would have done better). With two backends [weak, strong] the patterns are RoRF's
classes: both wrong, weak only right, strong only right, both right."""

from __future__ import annotations

import numpy as np

CORRECT_AT = 0.5  # a score at or above this counts as right (RouteLLM's True/False are 1/0)


def correctness_patterns(scores: np.ndarray, correct_at: float = CORRECT_AT) -> np.ndarray:
    """Class id per prompt: bit j set when backend j is right. scores [num_prompts, num_backends]."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [num_prompts, num_backends >= 2], got {scores.shape}")
    if scores.shape[1] > 8:
        raise ValueError(f"at most 8 backends (2**8 label classes), got {scores.shape[1]}")
    right = scores >= correct_at
    return (right * (1 << np.arange(scores.shape[1]))).sum(axis=1).astype(np.int64)


def match_matrix(num_backends: int) -> np.ndarray:
    """[2**num_backends, num_backends] 0/1: class c means backend j matches the best. Class
    probabilities @ this matrix = each backend's chance of matching the best."""
    classes = np.arange(1 << num_backends)[:, None]
    right = (classes >> np.arange(num_backends)[None, :]) & 1
    all_wrong = classes == 0
    return (right | all_wrong).astype(np.float64)


def class_names(backends: tuple[str, ...]) -> list[str]:
    """Readable names of the 2**N classes (RoRF's names for two backends [weak, strong])."""
    if len(backends) == 2:
        return ["both wrong", "weak only right", "strong only right", "both right"]
    names = []
    for c in range(1 << len(backends)):
        right = [b for j, b in enumerate(backends) if c >> j & 1]
        names.append("right: " + ", ".join(right) if right else "all wrong")
    return names


def label_scheme(num_backends: int) -> str:
    return "rorf-4class" if num_backends == 2 else f"correctness-pattern-{1 << num_backends}class"
