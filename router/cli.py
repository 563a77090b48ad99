"""`routegate router ...`: train, evaluate and calibrate routers, and label prompts with the local
backends (no judge).

    routegate router train --data ../shared/data/routellm/mmlu \\
        --strong gpt-4-1106-preview --weak mistralai/Mixtral-8x7B-Instruct-v0.1 --out mmlu.router
    routegate router evaluate --router mmlu.router --data held_out.csv --plot curve.png
    routegate router calibrate --router mmlu.router --data prompts.jsonl --strong-share 0.3
    routegate router label --prompts prompts.jsonl --backends smollm2-135m,gemma3-270m --out labels.jsonl
    routegate router build-default            # router/default.router (`make router`)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from router.embedder import BUNDLED_EMBEDDER

app = typer.Typer(help="Train, evaluate and calibrate query routers.", no_args_is_help=True, add_completion=False)

DEFAULT_CACHE = Path(os.environ.get("ROUTEGATE_CACHE", Path.home() / ".cache" / "routegate")) / "embeddings.sqlite"
CacheOpt = Annotated[Path, typer.Option(help="On-disk embedding cache (SQLite).")]


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=False)


def _fail(message: str) -> None:
    typer.echo(f"routegate router: {message}", err=True)
    raise typer.Exit(code=2)


def embed_with_progress(embedder, texts, label: str = "embedding"):
    with _progress() as progress:
        task = progress.add_task(label, total=len(texts))
        return embedder.embed(texts, progress=lambda n: progress.advance(task, n))


def _load_router(path: Path, cache: Path):
    """A router whose embedder reads and writes the embedding cache."""
    from router.embedder import Embedder
    from router.router import Router

    r = Router.load(path)
    return Router(r.forest, r.meta, Embedder(r.meta.embedder_model, cache=cache))


def _parse_costs(costs: list[str]) -> dict[str, float]:
    out = {}
    for item in costs:
        name, sep, value = item.rpartition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            _fail(f"--cost must be NAME=NUMBER, got {item!r}")
    return out


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="RouteLLM CSV (file or directory), RoRF CSV or JSONL.")],
    strong: Annotated[str, typer.Option(help="The strongest (most expensive) backend's column.")],
    weak: Annotated[str, typer.Option(help="The cheapest backend's column.")],
    out: Annotated[Path, typer.Option(help="Router file to write.")],
    model: Annotated[Optional[list[str]], typer.Option(help="More backends (columns), cheapest first.")] = None,
    cost: Annotated[Optional[list[str]], typer.Option(help="NAME=COST; default weak 1, --model 2.., strong last.")] = None,
    strong_share: Annotated[float, typer.Option(help="Calibrate the threshold to this share of non-cheapest calls.")] = 0.5,
    trees: int = 100,
    max_depth: Annotated[int, typer.Option(help="0 = unlimited.")] = 0,
    min_samples_leaf: int = 10,
    max_features: Annotated[str, typer.Option(help="'sqrt', 'log2' or a fraction such as 1.0 (RoRF's).")] = "sqrt",
    class_weight: Annotated[str, typer.Option(help="'balanced' or 'none' (RoRF's).")] = "balanced",
    seed: int = 0,
    embedder: Annotated[str, typer.Option(help="Sentence-transformers directory.")] = BUNDLED_EMBEDDER,
    cache: CacheOpt = DEFAULT_CACHE,
) -> None:
    """Train a RoRF-style router (4-class labels for two backends, 2**N patterns for N)."""
    from router.datasets import load_dataset
    from router.embedder import Embedder
    from router.training import ForestParams, train_router

    try:
        backends = [weak, *(model or []), strong]
        costs = {b: float(i + 1) for i, b in enumerate(backends)}
        costs.update(_parse_costs(cost or []))
        if set(costs) - set(backends):
            _fail(f"--cost names {sorted(set(costs) - set(backends))}, not among {backends}")
        dataset = load_dataset(data).select(backends)
        features = max_features if max_features in ("sqrt", "log2") else float(max_features)
        params = ForestParams(trees, max_depth or None, min_samples_leaf, features,
                              None if class_weight == "none" else class_weight, seed)
        emb = Embedder(embedder, cache=cache)
        X = embed_with_progress(emb, list(dataset.prompts))
        typer.echo(f"fitting {trees} trees on {len(dataset)} prompts ...")
        router = train_router(dataset, X, backends, [costs[b] for b in backends], emb, params, strong_share, str(data))
    except ValueError as exc:
        _fail(str(exc))
    router.save(out)
    size = out.stat().st_size
    typer.echo(f"wrote {out} ({size / 1e6:.2f} MB): backends {list(router.backends)}, threshold {router.threshold:.4f}, "
               f"fit {router.meta.training['fit_seconds']} s")


@app.command()
def evaluate(
    router: Annotated[Path, typer.Option(help="Router file.")],
    data: Annotated[Path, typer.Option(help="Labeled prompts with a column per backend.")],
    plot: Annotated[Optional[Path], typer.Option(help="PNG of quality against strong calls.")] = None,
    save: Annotated[bool, typer.Option(help="Store the metrics in the router file.")] = False,
    cache: CacheOpt = DEFAULT_CACHE,
) -> None:
    """APGR, CPT(50%), CPT(80%) with random and oracle references (RouteLLM's definitions)."""
    from router.datasets import load_dataset
    from router.evaluation import evaluate_router
    from router.metrics import plot_curves

    try:
        r = _load_router(router, cache)
        dataset = load_dataset(data)
        probs = r.probabilities(embed_with_progress(r.embedder, list(dataset.prompts)))
        ev = evaluate_router(probs, dataset, r.backends, r.threshold)
    except ValueError as exc:
        _fail(str(exc))
    m = ev.router
    typer.echo(f"{len(dataset)} prompts; weak {ev.weak} {100 * m.weak_quality:.2f}%, strong {ev.strong} {100 * m.strong_quality:.2f}%")
    typer.echo(f"{'':8}{'APGR':>8}{'CPT(50%)':>10}{'CPT(80%)':>10}")
    typer.echo(f"{'router':8}{m.apgr:8.3f}{100 * m.cpt50:9.1f}%{100 * m.cpt80:9.1f}%")
    typer.echo(f"{'random':8}{ev.random_apgr:8.3f}{100 * ev.random_cpt50:9.1f}%{'':>10}")
    typer.echo(f"{'oracle':8}{ev.oracle.apgr:8.3f}{100 * ev.oracle.cpt50:9.1f}%{100 * ev.oracle.cpt80:9.1f}%")
    plot = plot or router.with_suffix(".png")
    plot_curves(plot, ev.curves(), m.weak_quality, m.strong_quality, ev.weak, ev.strong, f"{router.name} on {data.name}")
    typer.echo(f"plot: {plot}")
    if save:
        r.replace_meta(metrics={**r.meta.metrics, data.name: ev.as_dict()}).save(router)
        typer.echo(f"metrics stored in {router}")


@app.command()
def calibrate(
    router: Annotated[Path, typer.Option(help="Router file (rewritten unless --out).")],
    data: Annotated[Path, typer.Option(help="Reference prompts: .jsonl, .txt or a CSV layout.")],
    strong_share: Annotated[float, typer.Option(help="Target share of calls past the cheapest backend.")] = 0.5,
    out: Annotated[Optional[Path], typer.Option(help="Write here instead of rewriting --router.")] = None,
    cache: CacheOpt = DEFAULT_CACHE,
) -> None:
    """Set the threshold so `strong_share` of the reference prompts leave the cheapest backend."""
    from router.labeling import load_prompts
    from router.policy import calibrate_threshold

    try:
        r = _load_router(router, cache)
        prompts = [p.prompt for p in load_prompts(data)]
        probs = r.probabilities(embed_with_progress(r.embedder, prompts))
        threshold = calibrate_threshold(probs[:, 0], strong_share)
    except ValueError as exc:
        _fail(str(exc))
    achieved = float((probs[:, 0] < threshold).mean())
    r.replace_meta(threshold=threshold).save(out or router)
    typer.echo(f"threshold {threshold:.6f}: {100 * achieved:.1f}% of {len(prompts)} prompts past {r.backends[0]} "
               f"(target {100 * strong_share:.1f}%); wrote {out or router}")


@app.command()
def label(
    prompts: Annotated[Path, typer.Option(help=".jsonl ({prompt, reference?}), .txt, or a CSV layout.")],
    backends: Annotated[str, typer.Option(help="Comma-separated, cheapest first (the last is the strongest).")],
    out: Annotated[Path, typer.Option(help="JSONL labels for `router train`.")],
    config: Annotated[Optional[Path], typer.Option(help="Gateway config naming the backends.")] = None,
    max_tokens: int = 16, agree_at: float = -1.0,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N prompts.")] = None,
) -> None:
    """Labels from the local backends: correctness where references are given, else the cheaper
    backends' likelihood of the strongest one's greedy answer (see router/labeling.py)."""
    from router.labeling import label_records, load_prompts, write_jsonl
    from router.local_backends import load_label_backends

    names = [n.strip() for n in backends.split(",") if n.strip()]
    try:
        items = load_prompts(prompts, limit)
        runners = load_label_backends(names, config)
    except ValueError as exc:
        _fail(str(exc))
    with _progress() as progress:
        task = progress.add_task("labeling", total=len(items))
        n = write_jsonl(out, label_records(items, runners, max_tokens, agree_at, lambda: progress.advance(task)))
    typer.echo(f"wrote {n} labeled prompts to {out}")


@app.command("build-default")
def build_default_command(
    prompts: Annotated[Path, typer.Option(help="Prompts to label (RouteLLM's MMLU by default).")] = Path("../shared/data/routellm/mmlu"),
    out: Path = Path("router/default.router"),
    num_prompts: int = 64,
    labels: Annotated[Path, typer.Option(help="Where the labels go (kept out of the repo).")] = DEFAULT_CACHE.parent / "default-labels.jsonl",
    cache: CacheOpt = DEFAULT_CACHE,
) -> None:
    """The default router for the bundled backends (smollm2-135m cheap, gemma3-270m strong)."""
    from router.build_default import build_default

    try:
        build_default(prompts, out, num_prompts, labels, cache, _progress, typer.echo)
    except ValueError as exc:
        _fail(str(exc))
