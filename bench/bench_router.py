"""Router quality and speed on RouteLLM's MMLU labels (Mixtral-8x7B weak, GPT-4 strong).

    .venv/bin/python bench/bench_router.py                          # full data, cached embeddings
    .venv/bin/python bench/bench_router.py --limit 600 --queries 50 # a quick smoke run
    .venv/bin/python bench/bench_router.py --cache /tmp/router/emb.sqlite
    .venv/bin/python bench/bench_router.py --latency-only --busy    # latency only, quiet and busy (~1 min)

One run, same split, same embeddings:
  * quality on a held-out 30% (split by distinct prompt, seed 0; nothing is tuned on it):
    APGR and CPT(50%) of our router, of a RoRF-style baseline (RoRF's forest settings: 100 trees,
    depth 20, max_features 1.0; its score P(strong only right) + P(both wrong)) and of a random
    router (mean of 10 draws);
  * routing latency of one short query, embedding included: p50/p99 over distinct queries, next to
    the reference path measured here too (SentenceTransformer.encode + sklearn predict_proba);
  * training time on all prompts with cached embeddings.
Embedding ~10k prompts the first time takes minutes on two cores (then they are cached).

--latency-only skips training and quality: it routes the same short queries with a router file
(--router, the bundled default router unless given) from one worker thread, as the gateway does,
next to the reference path (SentenceTransformer.encode + the same flat forest). --busy repeats
that while another thread keeps torch busy, as an engine decoding on the same two cores would.

NOTE: on a CPU shared with other busy processes the timings swing widely; read them on a quiet
machine. Targets: APGR >= 0.70, CPT(50%) <= 30%, p50 <= 5 ms, p99 <= 15 ms, training <= 120 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_results.py
from _results import record  # noqa: E402

from router.cli import DEFAULT_CACHE  # noqa: E402
from router.datasets import load_dataset  # noqa: E402
from router.embedder import Embedder  # noqa: E402
from router.evaluation import evaluate_router  # noqa: E402
from router.labels import correctness_patterns  # noqa: E402
from router.metrics import evaluate_win_rates  # noqa: E402
from router.training import ForestParams, fit_forest, train_router  # noqa: E402

# RouteLLM's MMLU labels, read in place: $ROUTEGATE_ROUTELLM_MMLU, ../shared next to the checkout,
# or the workplace's /work/shared (a clone made elsewhere on the machine), as the tests look.
_DATA_CANDIDATES = [Path(os.environ["ROUTEGATE_ROUTELLM_MMLU"]) if os.environ.get("ROUTEGATE_ROUTELLM_MMLU") else None,
                    Path(__file__).resolve().parents[2] / "shared" / "data" / "routellm" / "mmlu",
                    Path("/work/shared/data/routellm/mmlu")]
DATA = next((p for p in _DATA_CANDIDATES if p is not None and p.is_dir()), _DATA_CANDIDATES[1])
WEAK, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
RORF = ForestParams(n_estimators=100, max_depth=20, min_samples_leaf=1, max_features=1.0, class_weight=None)
MMLU_PARAMS = ForestParams()  # our defaults (router/training.py)
DEFAULT_ROUTER = Path(__file__).resolve().parents[1] / "router" / "default.router"


def split_by_prompt(prompts, test_share=0.3, seed=0):
    """Row indices (train, test) with every copy of a prompt on the same side."""
    unique = sorted(set(prompts))
    test = set(np.array(unique)[np.random.default_rng(seed).permutation(len(unique))[: int(test_share * len(unique))]])
    rows = np.arange(len(prompts))
    in_test = np.array([p in test for p in prompts])
    return rows[~in_test], rows[in_test]


def ratio_line(name, value, target, unit="", higher_is_better=False):
    ok = value >= target if higher_is_better else value <= target
    ratio = value / target if target else float("nan")
    print(f"  {name:<28}{value:10.3f}{unit:<3} target {'>=' if higher_is_better else '<='} {target}{unit}  "
          f"ratio {ratio:.2f}  {'met' if ok else 'NOT met'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N rows (smoke runs)")
    ap.add_argument("--queries", type=int, default=300, help="distinct short queries for the latency")
    ap.add_argument("--latency-only", action="store_true", help="only the routing latency, with --router")
    ap.add_argument("--router", type=Path, default=DEFAULT_ROUTER, help="router file for --latency-only")
    ap.add_argument("--busy", action="store_true", help="--latency-only: also measure next to a busy torch thread")
    args = ap.parse_args()

    data = load_dataset(args.data).select([WEAK, STRONG])
    if args.limit:
        data = data.subset(np.arange(min(args.limit, len(data))))
    if args.latency_only:
        latency_only(args, data)
        return
    embedder = Embedder(cache=args.cache)
    t = time.perf_counter()
    X = embedder.embed(list(data.prompts))
    print(f"{len(data)} prompts embedded (or read from {args.cache}) in {time.perf_counter() - t:.1f} s")
    train, test = split_by_prompt(data.prompts)
    test_data = data.subset(test)
    print(f"train {len(train)} / held-out {len(test)}; weak {WEAK} {data.scores[test, 0].mean():.3f}, "
          f"strong {STRONG} {data.scores[test, 1].mean():.3f}")

    # RoRF-style baseline: 4 classes [both wrong, weak only, strong only, both right]
    t = time.perf_counter()
    rorf = fit_forest(X[train], correctness_patterns(data.scores[train]), RORF)
    rorf_fit = time.perf_counter() - t
    full = np.zeros((len(test), 4))
    full[:, rorf.classes_] = rorf.predict_proba(X[test])
    weak_s, strong_s = test_data.scores[:, 0], test_data.scores[:, 1]
    rorf_score = evaluate_win_rates(full[:, 2] + full[:, 0], weak_s, strong_s)
    rorf_strong_only = evaluate_win_rates(full[:, 2], weak_s, strong_s)

    ours = train_router(data.subset(train), X[train], (WEAK, STRONG), (1.0, 2.0), embedder, MMLU_PARAMS, 0.5)
    ev = evaluate_router(ours.probabilities(X[test]), test_data, ours.backends, ours.threshold)
    print(f"\nheld-out quality ({len(test)} prompts)        APGR   CPT(50%)  CPT(80%)")
    print(f"  ours {str(MMLU_PARAMS.n_estimators) + ' trees':<32}{ev.router.apgr:6.3f}  {100 * ev.router.cpt50:7.1f}%  {100 * ev.router.cpt80:7.1f}%")
    print(f"  RoRF-style, RoRF score ({rorf_fit:.0f} s fit)     {rorf_score.apgr:6.3f}  {100 * rorf_score.cpt50:7.1f}%  {100 * rorf_score.cpt80:7.1f}%")
    print(f"  RoRF-style, P(strong only right)      {rorf_strong_only.apgr:6.3f}  {100 * rorf_strong_only.cpt50:7.1f}%  {100 * rorf_strong_only.cpt80:7.1f}%")
    print(f"  random (10 draws)                     {ev.random_apgr:6.3f}  {100 * ev.random_cpt50:7.1f}%")
    print(f"  oracle                                {ev.oracle.apgr:6.3f}  {100 * ev.oracle.cpt50:7.1f}%  {100 * ev.oracle.cpt80:7.1f}%")

    # training time on every prompt, embeddings cached
    t = time.perf_counter()
    full_router = train_router(data, X, (WEAK, STRONG), (1.0, 2.0), embedder, MMLU_PARAMS, 0.5)
    train_s = time.perf_counter() - t

    # latency: distinct short queries (the first words of held-out prompts), after one warm-up
    queries = short_queries(data, test, args.queries)
    full_router.warm_up()
    ours_ms = [full_router.route(q).latency_ms for q in queries]
    reference_ms = reference_latency(embedder, rorf, [q + " ?" for q in queries[:50]])
    p50, p99 = np.percentile(ours_ms, 50), np.percentile(ours_ms, 99)
    print(f"\nrouting one short query ({len(queries)} distinct): ours p50 {p50:.2f} ms, p99 {p99:.2f} ms; "
          f"reference (ST encode + sklearn forest, n_jobs=-1) p50 {np.percentile(reference_ms, 50):.2f} ms "
          f"-> {np.percentile(reference_ms, 50) / p50:.1f}x faster")
    print(f"training on {len(data)} prompts with cached embeddings: {train_s:.1f} s "
          f"(RoRF-style forest on {len(train)}: {rorf_fit:.1f} s)")

    print("\ntargets")
    ratio_line("APGR", ev.router.apgr, 0.70, higher_is_better=True)
    ratio_line("CPT(50%)", 100 * ev.router.cpt50, 30, "%")
    ratio_line("latency p50", p50, 5, " ms")
    ratio_line("latency p99", p99, 15, " ms")
    ratio_line("training", train_s, 120, " s")
    ref_p50 = float(np.percentile(reference_ms, 50))
    record("router", "APGR, MMLU held-out 30%", ev.router.apgr, "RoRF-style forest", rorf_score.apgr,
           "APGR >= 0.70", ev.router.apgr >= 0.70)
    record("router", "CPT(50%), MMLU held-out 30%", 100 * ev.router.cpt50, "RoRF-style forest", 100 * rorf_score.cpt50,
           "CPT(50%) <= 30%", ev.router.cpt50 <= 0.30, "%")
    record("router", "route one short query p50", float(p50), "ST encode + sklearn", ref_p50, "p50 <= 5 ms", p50 <= 5, "ms")
    record("router", "route one short query p99", float(p99), "ST encode + sklearn",
           float(np.percentile(reference_ms, 99)), "p99 <= 15 ms", p99 <= 15, "ms")
    record("router", f"training, {len(data)} prompts cached", train_s, "RoRF-style fit (70%)", rorf_fit,
           "<= 120 s", train_s <= 120, "s")


def short_queries(data, rows, num_queries):
    """Distinct short queries: the first 12 words of the given prompts."""
    return list(dict.fromkeys(" ".join(data.prompts[i].split()[:12]) for i in rows))[:num_queries]


class BusyTorch:
    """A thread doing what a decoding engine does to the CPU: torch products back to back, on
    torch's own (process-wide) thread count."""

    def __enter__(self):
        import torch

        self._stop = threading.Event()
        a, b = torch.randn(64, 1024), torch.randn(1024, 1024)

        def spin():
            while not self._stop.is_set():
                a @ b

        self._thread = threading.Thread(target=spin, daemon=True)
        self._thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def latency_only(args, data):
    """Routing latency of one short query with a router file, from one worker thread (the gateway's
    RoutingService), next to ST encode + the same forest in the same run."""
    from concurrent.futures import ThreadPoolExecutor

    from router import Router

    router = Router.load(args.router)
    _, test = split_by_prompt(data.prompts)
    queries = short_queries(data, test, args.queries)
    print(f"router {args.router}: {router.forest.num_trees} trees, depth {router.forest.depth}; "
          f"{len(queries)} distinct short queries")
    embedder = router.embedder
    forest = router.forest
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="router") as worker:
        worker.submit(router.warm_up).result()

        def run(label):
            ours = [worker.submit(router.route, q).result().latency_ms for q in queries]
            reference = worker.submit(reference_flat_latency, embedder, forest, [q + " ?" for q in queries[:50]]).result()
            p50, p99, ref50 = np.percentile(ours, 50), np.percentile(ours, 99), np.percentile(reference, 50)
            print(f"  {label:<6} ours p50 {p50:6.2f} ms, p99 {p99:6.2f} ms; reference (ST encode + flat forest) "
                  f"p50 {ref50:6.2f} ms, p99 {np.percentile(reference, 99):6.2f} ms -> {ref50 / p50:.1f}x faster")
            return p50, p99, reference

        p50, p99, reference = run("quiet")
        if args.busy:
            with BusyTorch():
                run("busy")
    print("\ntargets (quiet)")
    ratio_line("latency p50", p50, 5, " ms")
    ratio_line("latency p99", p99, 15, " ms")
    record("router", "route one short query p50", float(p50), "ST encode + flat forest",
           float(np.percentile(reference, 50)), "p50 <= 5 ms", p50 <= 5, "ms")
    record("router", "route one short query p99", float(p99), "ST encode + flat forest",
           float(np.percentile(reference, 99)), "p99 <= 15 ms", p99 <= 15, "ms")


def reference_flat_latency(embedder, forest, queries):
    """SentenceTransformer.encode then the router's own flat forest: the embedding path alone."""
    out = []
    for q in queries:
        t = time.perf_counter()
        forest.predict_one(embedder._st.encode([q])[0])
        out.append((time.perf_counter() - t) * 1e3)
    return out


def reference_latency(embedder, sk_forest, queries):
    """FACTS.md's measured path: SentenceTransformer.encode then predict_proba (n_jobs=-1)."""
    out = []
    sk_forest.set_params(n_jobs=-1)
    for q in queries:
        t = time.perf_counter()
        sk_forest.predict_proba(embedder._st.encode([q]))
        out.append((time.perf_counter() - t) * 1e3)
    return out


if __name__ == "__main__":
    main()
