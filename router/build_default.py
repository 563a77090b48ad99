"""The default router for the bundled backends, made from scratch by one command
(`make router`, i.e. `routegate router build-default`):

1. take `num_prompts` prompts of at most MAX_PROMPT_CHARS from `prompts` (RouteLLM's MMLU by
   default), the ones with the smallest sha256 (a fixed sample whatever the file order);
2. label them by running both bundled backends (router/labeling.py's likelihood rule): gemma3-270m
   (strong) answers greedily, smollm2-135m (cheap) scores that answer; the agreement cut is the
   median mean log-probability, so half the prompts count as "the cheap one would do";
3. train a small forest (DEFAULT_PARAMS keeps the file well under 2 MB) on 70% and record APGR and
   CPT on the other 30%, then train on all and calibrate to DEFAULT_STRONG_SHARE.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from router.datasets import RoutingDataset
from router.embedder import Embedder
from router.evaluation import evaluate_router
from router.labeling import label_records, load_prompts, write_jsonl
from router.training import ForestParams, train_router

CHEAP, STRONG = "smollm2-135m", "gemma3-270m"
COSTS = (1.0, 2.0)  # by parameter count: 135M vs 270M
DEFAULT_PARAMS = ForestParams(n_estimators=50, max_depth=8, min_samples_leaf=3, max_features="sqrt",
                              class_weight="balanced", random_state=0)
DEFAULT_STRONG_SHARE = 0.5
# Labeling runs both models on two CPU cores: short prompts and a few answer tokens keep it to
# minutes (an MMLU answer is its first token or two: " B", " (D)").
MAX_PROMPT_CHARS = 400
LABEL_MAX_TOKENS = 4


def sample_prompts(path: Path, num_prompts: int) -> list[str]:
    """The num_prompts short prompts with the smallest sha256: a fixed sample whatever the order."""
    prompts = {p.prompt for p in load_prompts(path) if len(p.prompt) <= MAX_PROMPT_CHARS}
    return sorted(prompts, key=lambda p: hashlib.sha256(p.encode()).digest())[:num_prompts]


def build_default(prompts_path: Path, out: Path, num_prompts: int, labels_path: Path, cache: Path,
                  progress_factory: Callable, echo: Callable[[str], None]) -> None:
    prompts = sample_prompts(Path(prompts_path), num_prompts)
    records = _read_labels(labels_path, prompts)
    if records is None:
        from router.labeling import LabelPrompt
        from router.local_backends import load_label_backends

        runners = load_label_backends([CHEAP, STRONG])
        with progress_factory() as progress:
            task = progress.add_task(f"labeling with {CHEAP} and {STRONG}", total=len(prompts))
            write_jsonl(labels_path, label_records([LabelPrompt(p) for p in prompts], runners, LABEL_MAX_TOKENS,
                                                   progress=lambda: progress.advance(task)))
        records = _read_labels(labels_path, prompts)
    else:
        echo(f"reusing labels in {labels_path}")
    likelihood = np.array([r["mean_logprob"][CHEAP] for r in records])
    cut = float(np.median(likelihood))
    scores = np.stack([(likelihood >= cut).astype(np.float64), np.ones(len(records))], axis=1)
    data = RoutingDataset(tuple(prompts), (CHEAP, STRONG), scores)
    embedder = Embedder(cache=cache)
    X = embedder.embed(list(prompts))
    rows = np.random.default_rng(0).permutation(len(data))
    split = int(0.7 * len(data))
    held = train_router(data.subset(rows[:split]), X[rows[:split]], (CHEAP, STRONG), COSTS, embedder,
                        DEFAULT_PARAMS, DEFAULT_STRONG_SHARE, str(prompts_path))
    ev = evaluate_router(held.probabilities(X[rows[split:]]), data.subset(rows[split:]), held.backends, held.threshold)
    router = train_router(data, X, (CHEAP, STRONG), COSTS, embedder, DEFAULT_PARAMS, DEFAULT_STRONG_SHARE,
                          f"build-default: {num_prompts} prompts of {Path(prompts_path).name}")
    training = {**router.meta.training, "labels": f"likelihood rule, agree_at = median mean log-prob = {cut:.4f}",
                "max_tokens": LABEL_MAX_TOKENS}
    router = router.replace_meta(training=training, metrics={"held_out_30pct": ev.as_dict()})
    router.save(out)
    echo(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB); held-out APGR {ev.router.apgr:.3f} "
         f"(random {ev.random_apgr:.3f}), threshold {router.threshold:.4f}")


def _read_labels(path: Path, prompts: list[str]) -> list[dict] | None:
    """The labels in `path` when they cover exactly `prompts`, in order; else None (relabel)."""
    if not Path(path).is_file():
        return None
    records = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    if [r.get("prompt") for r in records] != prompts or any("mean_logprob" not in r for r in records):
        return None
    return records
