"""RouteLLM's router metrics. A router gives each prompt a strong-win rate; thresholds at the 11
edges of 10 equal-count bins of those rates give 11 routings (strong when rate >= edge, and none
at the last edge); each routing has a share of strong calls and a mean quality.

    AUC  = trapezoid area of quality over strong share (0..1)
    APGR = (AUC - AUC_weak) / (AUC_strong - AUC_weak)   weak/strong: the constant lines
    CPT(x%) = strong share where the curve reaches weak + x% of (strong - weak), by linear
              interpolation over the points sorted by share (np.interp, as RouteLLM)
The oracle sends a prompt to the strong backend only where that gains quality, best gains first."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CurvePoint:
    threshold: float  # strong-win-rate edge (nan for the oracle)
    strong_share: float  # fraction of calls to the strong backend(s)
    quality: float  # mean score of the routed answers


@dataclass(frozen=True)
class RoutingMetrics:
    apgr: float
    cpt50: float  # strong share needed for 50% of the quality gap
    cpt80: float
    auc: float
    weak_quality: float
    strong_quality: float
    points: tuple[CurvePoint, ...]

    def as_dict(self) -> dict:
        return {"apgr": self.apgr, "cpt50": self.cpt50, "cpt80": self.cpt80, "auc": self.auc,
                "weak_quality": self.weak_quality, "strong_quality": self.strong_quality}


def routellm_curve(win_rates: np.ndarray, weak: np.ndarray, strong: np.ndarray,
                   num_results: int = 10) -> list[CurvePoint]:
    """weak/strong: each prompt's quality when answered by the weak / strong side."""
    win_rates, weak, strong = (np.asarray(a, dtype=np.float64) for a in (win_rates, weak, strong))
    if not len(win_rates) == len(weak) == len(strong) > 0:
        raise ValueError("win_rates, weak and strong must be non-empty and the same length")
    edges = np.quantile(win_rates, np.linspace(0.0, 1.0, num_results + 1))  # what pd.qcut bins by
    points = []
    for i, edge in enumerate(edges):
        to_strong = win_rates >= edge if i < len(edges) - 1 else win_rates > edge
        quality = np.where(to_strong, strong, weak).mean()
        points.append(CurvePoint(float(edge), float(to_strong.mean()), float(quality)))
    return points


def oracle_curve(weak: np.ndarray, strong: np.ndarray, num_results: int = 10) -> list[CurvePoint]:
    weak, strong = np.asarray(weak, dtype=np.float64), np.asarray(strong, dtype=np.float64)
    gains = np.sort(np.clip(strong - weak, 0.0, None))[::-1]
    cum = np.concatenate([[0.0], np.cumsum(gains)])
    points = []
    for share in np.linspace(0.0, 1.0, num_results + 1):
        k = int(np.floor(share * len(weak) + 1e-9))
        points.append(CurvePoint(float("nan"), float(share), float((weak.sum() + cum[k]) / len(weak))))
    return points


def summarize(points: list[CurvePoint], weak_quality: float, strong_quality: float) -> RoutingMetrics:
    if strong_quality == weak_quality:
        raise ValueError("strong and weak quality are equal: the quality gap (and APGR) is undefined")
    pts = sorted(points, key=lambda p: p.strong_share)
    share = np.array([p.strong_share for p in pts])
    quality = np.array([p.quality for p in pts])
    auc = float(np.trapezoid(quality, share))
    weak_auc = float(np.trapezoid(np.full_like(share, weak_quality), share))
    strong_auc = float(np.trapezoid(np.full_like(share, strong_quality), share))
    gap = strong_quality - weak_quality
    cpt50 = float(np.interp(weak_quality + 0.5 * gap, quality, share))
    cpt80 = float(np.interp(weak_quality + 0.8 * gap, quality, share))
    return RoutingMetrics((auc - weak_auc) / (strong_auc - weak_auc), cpt50, cpt80, auc,
                          float(weak_quality), float(strong_quality), tuple(pts))


def evaluate_win_rates(win_rates: np.ndarray, weak: np.ndarray, strong: np.ndarray,
                       num_results: int = 10) -> RoutingMetrics:
    points = routellm_curve(win_rates, weak, strong, num_results)
    return summarize(points, float(np.mean(weak)), float(np.mean(strong)))


def plot_curves(path, curves: dict[str, list[CurvePoint]], weak_quality: float, strong_quality: float,
                weak_name: str, strong_name: str, title: str) -> None:
    """A PNG of quality against the share of strong calls, one line per curve."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, pts in curves.items():
        pts = sorted(pts, key=lambda p: p.strong_share)
        ax.plot([100 * p.strong_share for p in pts], [100 * p.quality for p in pts], marker=".", label=name)
    ax.axhline(100 * weak_quality, color="grey", linestyle="--", label=f"{weak_name} (weak)")
    ax.axhline(100 * strong_quality, color="red", linestyle="--", label=f"{strong_name} (strong)")
    ax.set_xlabel("strong calls (%)")
    ax.set_ylabel("quality (%)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
