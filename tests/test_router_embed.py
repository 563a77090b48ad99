"""The router with the real bundled MiniLM: embedder and cache, the CLI end to end (train,
evaluate, calibrate) on a small sample of RouteLLM's MMLU, the Python API, the default router."""

import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gateway.cli import app  # noqa: E402
from router import Router  # noqa: E402
from router.datasets import load_dataset  # noqa: E402
from router.embedder import Embedder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
from tests.routellm_data import MMLU  # noqa: E402
SUBJECTS = ("mmlu_abstract_algebra.csv", "mmlu_global_facts.csv")  # 79 + 67 short prompts
needs_mmlu = pytest.mark.skipif(not MMLU.is_dir(), reason="RouteLLM MMLU data not present")


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return Embedder(cache=tmp_path_factory.mktemp("cache") / "emb.sqlite")


def test_single_query_path_equals_the_batched_pipeline(embedder):
    texts = ["What is the capital of France?", "Explain the proof of Fermat's little theorem in two lines.", "hi"]
    batched = embedder.embed(texts)
    assert batched.shape == (3, 384) and batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    for text, row in zip(texts, batched):
        np.testing.assert_allclose(embedder.embed_one(text), row, atol=1e-5)
    assert embedder.id.startswith("sentence-transformers/all-MiniLM-L6-v2@")


def test_single_query_path_runs_on_one_thread_of_the_calling_thread_only(embedder):
    import torch

    from router.minilm_torch import OneThread

    one_thread = OneThread()
    process_wide = torch.get_num_threads()
    seen = {}

    def worker():  # the gateway routes from a worker thread while engines run torch elsewhere
        before = torch.get_num_threads()
        with one_thread():
            seen["inside"] = torch.get_num_threads()
        seen["after"] = torch.get_num_threads() == before
        seen["embedding"] = embedder.embed_one("What is the capital of France?")

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["inside"] == 1 and seen["after"]
    assert torch.get_num_threads() == process_wide  # other threads keep their count
    np.testing.assert_allclose(seen["embedding"], embedder.embed(["What is the capital of France?"])[0], atol=1e-5)


def test_single_query_encoder_refuses_more_ids_than_positions(embedder):
    with pytest.raises(ValueError, match="1 to 512 token ids"):
        embedder._encoder.encode([101] * 513)


def test_cache_is_keyed_by_model_and_text(embedder, tmp_path):
    texts = ["alpha beta", "gamma delta", "alpha beta"]
    first = Embedder(cache=tmp_path / "c.sqlite")
    vecs = first.embed(texts)
    assert len(first.cache) == 2
    assert first.cache.get_many("another-model@0", texts[:1], 384) == [None]
    again = Embedder(cache=tmp_path / "c.sqlite")
    seen = []
    np.testing.assert_array_equal(again.embed(texts, progress=seen.append), vecs)
    assert seen == [3]  # all three came from the cache in one go, nothing was embedded


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    if not MMLU.is_dir():
        pytest.skip("RouteLLM MMLU data not present")
    folder = tmp_path_factory.mktemp("mmlu")
    for name in SUBJECTS:
        shutil.copy(MMLU / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def trained(sample, embedder, tmp_path_factory):
    out = tmp_path_factory.mktemp("routers") / "mmlu.router"
    cache = str(embedder.cache.path)
    result = CliRunner().invoke(app, [
        "router", "train", "--data", str(sample), "--strong", "gpt-4-1106-preview",
        "--weak", "mistralai/Mixtral-8x7B-Instruct-v0.1", "--out", str(out), "--trees", "20",
        "--max-depth", "6", "--cache", cache])
    assert result.exit_code == 0, result.output
    return out, cache


@needs_mmlu
def test_train_writes_a_router_with_its_metadata(trained, sample, embedder):
    out, _ = trained
    router = Router.load(out, embedder=embedder)
    data = load_dataset(sample)
    assert router.backends == ("mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview")
    assert router.meta.label_scheme == "rorf-4class" and router.meta.embedder_dim == 384
    assert router.meta.embedder_id == embedder.id
    assert router.meta.training["data_digest"] == data.digest() and router.meta.training["num_prompts"] == 146
    assert router.meta.training["forest"]["n_estimators"] == 20 and router.forest.num_trees == 20
    # trained with --strong-share 0.5 on its own prompts: half of them leave the weak backend
    probs = router.probabilities(embedder.embed(list(data.prompts)))
    escalated = int((probs[:, 0] < router.threshold).sum())
    assert escalated == 73 or (np.sum(probs[:, 0] == np.sort(probs[:, 0])[73]) > 1 and escalated < 73)


@needs_mmlu
def test_evaluate_prints_metrics_and_writes_a_png(trained, sample, tmp_path):
    out, cache = trained
    plot = tmp_path / "curve.png"
    result = CliRunner().invoke(app, ["router", "evaluate", "--router", str(out), "--data", str(sample),
                                      "--plot", str(plot), "--save", "--cache", cache])
    assert result.exit_code == 0, result.output
    assert re.search(r"router\s+\d\.\d{3}\s+\d+\.\d%\s+\d+\.\d%", result.output)
    assert "random" in result.output and "oracle" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = Router.load(out).meta.metrics[sample.name]
    assert set(stored) >= {"apgr", "cpt50", "cpt80", "random_apgr", "oracle_apgr"}
    assert stored["oracle_apgr"] > stored["random_apgr"]


@needs_mmlu
def test_calibrate_sets_the_strong_share(trained, sample, embedder, tmp_path):
    out, cache = trained
    calibrated = tmp_path / "cal.router"
    result = CliRunner().invoke(app, ["router", "calibrate", "--router", str(out), "--data", str(sample / SUBJECTS[1]),
                                      "--strong-share", "0.3", "--out", str(calibrated), "--cache", cache])
    assert result.exit_code == 0, result.output
    router = Router.load(calibrated, embedder=embedder)
    prompts = list(load_dataset(sample / SUBJECTS[1]).prompts)
    cheapest = router.probabilities(embedder.embed(prompts))[:, 0]
    # 30% of 67 is 20 prompts, unless tied chances sit on the cut (then fewer, never more)
    assert len(prompts) == 67
    ties = np.sum(cheapest == np.sort(cheapest)[20])
    escalated = int((cheapest < router.threshold).sum())
    assert escalated == 20 or (ties > 1 and escalated < 20)


@needs_mmlu
def test_route_api(trained, embedder):
    router = Router.load(trained[0], embedder=embedder)
    decision = router.route("What is the largest desert on Earth?\nA. Sahara\nB. Antarctica\nC. Gobi\nD. Arabian\nAnswer:")
    assert set(decision.probabilities) == set(router.backends)
    assert decision.score == decision.probabilities[router.backends[0]]
    assert decision.backend == (router.backends[0] if decision.score >= router.threshold else router.backends[1])
    assert decision.threshold == router.threshold and decision.latency_ms > 0
    forced = router.route("Same question?", threshold=1.0)
    assert forced.backend == router.backends[1] or forced.score == 1.0
    texts = ["one", "two words", "a longer prompt about thermodynamics"]
    batch = router.route_batch(texts, threshold=0.5)
    expected = router.probabilities(embedder.embed(texts))
    assert [d.probabilities[router.backends[0]] for d in batch] == expected[:, 0].tolist()
    with pytest.raises(ValueError, match="threshold"):
        router.route("x", threshold=1.5)


def test_default_router_is_small_and_routes_the_default_backends(embedder):
    path = REPO / "router" / "default.router"
    assert path.stat().st_size < 2_000_000
    router = Router.load(path, embedder=embedder)
    assert router.backends == ("smollm2-135m", "gemma3-270m")
    assert router.meta.embedder_model == "bundled:all-MiniLM-L6-v2"
    assert len(router.meta.training["data_digest"]) == 64 and "held_out_30pct" in router.meta.metrics
    assert router.route("Write a haiku about autumn.").backend in router.backends
