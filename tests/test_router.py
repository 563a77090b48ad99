"""Router logic without the embedding model: labels, the routing rule, calibration, RouteLLM's
metrics against hand-computed values, both CSV layouts and JSONL, the flat forest against
sklearn, and the router file (round trip, and malicious files refused)."""

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from router.datasets import RoutingDataset, load_dataset
from router.evaluation import evaluate_router
from router.forest import FlatForest
from router.labels import class_names, correctness_patterns, label_scheme, match_matrix
from router.metrics import evaluate_win_rates, oracle_curve, routellm_curve, summarize
from router.policy import calibrate_threshold, choose
from router.router import Router
from router.router_file import RouterMeta, load_router_file, save_router_file

from tests.routellm_data import MMLU  # noqa: E402


def test_rorf_four_classes_and_what_they_say_about_each_backend():
    # backends [weak, strong]; rows: both wrong, weak only right, strong only right, both right
    scores = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.4, 0.6]])
    assert correctness_patterns(scores).tolist() == [0, 1, 2, 3, 2]
    assert class_names(("w", "s")) == ["both wrong", "weak only right", "strong only right", "both right"]
    # weak matches the best unless only the strong one is right; strong unless only the weak one is
    assert match_matrix(2).tolist() == [[1, 1], [1, 0], [0, 1], [1, 1]]
    assert label_scheme(2) == "rorf-4class" and label_scheme(3) == "correctness-pattern-8class"


def test_three_backend_patterns():
    scores = np.array([[0, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert correctness_patterns(scores).tolist() == [6, 1, 0]
    m = match_matrix(3)
    assert m[6].tolist() == [0, 1, 1] and m[1].tolist() == [1, 0, 0] and m[0].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="num_backends >= 2"):
        correctness_patterns(np.array([[1.0], [0.0]]))


def test_cheapest_backend_that_clears_the_threshold_answers():
    probs = np.array([[0.7, 0.9, 1.0], [0.1, 0.2, 0.3], [0.5, 0.95, 0.2]])
    assert choose(probs, 0.6).tolist() == [0, 2, 1]
    assert choose(probs, 0.8).tolist() == [1, 2, 1]
    assert choose(probs, 0.99).tolist() == [2, 2, 2]  # nothing clears: the most expensive
    assert choose(probs, 0.0).tolist() == [0, 0, 0]


def test_calibration_hits_the_share_exactly_where_chances_differ():
    p = np.array([0.5, 0.1, 0.4, 0.2, 0.3])
    assert calibrate_threshold(p, 0.4) == pytest.approx(0.25)
    assert (p < calibrate_threshold(p, 0.4)).mean() == 0.4
    assert calibrate_threshold(p, 0.0) == 0.1 and (p < 0.1).sum() == 0
    t = calibrate_threshold(p, 1.0)
    assert t > 0.5 and (p < t).all()
    # ties at the cut: fewer than asked, never more
    assert calibrate_threshold(np.array([0.2, 0.2, 0.2, 0.9]), 0.5) == 0.2
    with pytest.raises(ValueError, match="strong_share"):
        calibrate_threshold(p, 1.5)


def test_routellm_metrics_against_hand_computed_values():
    win = np.array([0.1, 0.2, 0.3, 0.4])
    weak = np.array([1.0, 0.0, 0.0, 1.0])
    strong = np.array([1.0, 1.0, 0.0, 1.0])
    points = routellm_curve(win, weak, strong, num_results=2)
    # edges 0.1, 0.25, 0.4: all strong; the two rates >= 0.25 strong; none (rate > max)
    assert [(p.threshold, p.strong_share, p.quality) for p in points] == [(0.1, 1.0, 0.75), (0.25, 0.5, 0.5), (0.4, 0.0, 0.5)]
    m = summarize(points, 0.5, 0.75)
    # AUC = 0.5 * (0.5 + 0.5) / 2 + 0.5 * (0.5 + 0.75) / 2 = 0.5625; APGR = (0.5625 - 0.5) / 0.25
    assert m.auc == pytest.approx(0.5625) and m.apgr == pytest.approx(0.25)
    assert m.cpt50 == pytest.approx(0.75) and m.cpt80 == pytest.approx(0.9)
    oracle = oracle_curve(weak, strong, num_results=2)
    assert [(p.strong_share, p.quality) for p in oracle] == [(0.0, 0.5), (0.5, 0.75), (1.0, 0.75)]
    # the default 10 bins, a ranking that puts the one prompt that gains first
    assert evaluate_win_rates(strong - weak, weak, strong).apgr == pytest.approx(0.875)


def test_routellm_csv_layout(tmp_path):
    path = tmp_path / "mmlu_x.csv"
    path.write_text('prompt,weak/model,strong-model\n"Q1, with ""quotes""\nA. x\nAnswer:",True,True\nQ2,False,True\n')
    d = load_dataset(path)
    assert d.prompts == ('Q1, with "quotes"\nA. x\nAnswer:', "Q2") and d.models == ("weak/model", "strong-model")
    assert d.scores.tolist() == [[1.0, 1.0], [0.0, 1.0]]
    (tmp_path / "mmlu_y.csv").write_text("prompt,weak/model,strong-model\nQ3,True,False\n")
    both = load_dataset(tmp_path)
    assert both.prompts == (d.prompts[0], "Q2", "Q3") and both.scores[2].tolist() == [1.0, 0.0]


def test_rorf_csv_layout_and_jsonl(tmp_path):
    path = tmp_path / "rorf.csv"
    path.write_text("id,Input,a/response,a/score,b/score\n1,hello,hi,0.25,1\n2,bye,ok,1.0,0.0\n")
    d = load_dataset(path)
    assert d.prompts == ("hello", "bye") and d.models == ("a", "b") and d.scores.tolist() == [[0.25, 1.0], [1.0, 0.0]]
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text(json.dumps({"prompt": "p", "scores": {"x": 1.0, "y": 0.0}, "rule": "reference"}) + "\n")
    assert load_dataset(jsonl).select(["y", "x"]).scores.tolist() == [[0.0, 1.0]]
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,a,b\nq,True,maybe\n")
    with pytest.raises(ValueError, match="row 2, column 'b'"):
        load_dataset(bad)


@pytest.mark.skipif(not MMLU.is_dir(), reason="RouteLLM MMLU data not present")
def test_reads_routellm_mmlu_file_as_it_is():
    d = load_dataset(MMLU / "mmlu_abstract_algebra.csv")
    assert d.models == ("mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview")
    assert len(d) == 79 and d.prompts[0].startswith("Find the degree for the given field extension")
    assert d.scores[0].tolist() == [1.0, 1.0] and set(np.unique(d.scores)) <= {0.0, 1.0}


def _toy_forest(num_backends=2, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, dim)).astype(np.float32)
    scores = (rng.random((400, num_backends)) < 0.5).astype(float)
    scores[X[:, 0] > 0.5, 0] = 0.0  # a pattern to learn: the cheap one fails here
    labels = correctness_patterns(scores)
    sk = RandomForestClassifier(n_estimators=7, max_depth=6, random_state=seed, n_jobs=1).fit(X, labels)
    return sk, FlatForest.from_sklearn(sk, match_matrix(num_backends), dim), X, scores


def test_flat_forest_predicts_what_sklearn_predicts():
    sk, flat, X, _ = _toy_forest()
    expected = sk.predict_proba(X[:50]) @ match_matrix(2)[sk.classes_]
    np.testing.assert_allclose(flat.predict(X[:50]), expected, atol=1e-6)
    np.testing.assert_allclose(flat.predict_one(X[3]), expected[3], atol=1e-6)
    assert flat.depth == max(e.tree_.max_depth for e in sk.estimators_)


def _meta(dim=6, backends=("cheap", "dear"), costs=(1.0, 2.0), threshold=0.5):
    return RouterMeta(backends, costs, threshold, "rorf-4class", "bundled:all-MiniLM-L6-v2", "toy@0", dim,
                      {"data_digest": "abc"}, {})


def test_router_file_round_trip_and_cost_override(tmp_path):
    _, flat, X, scores = _toy_forest()
    path = tmp_path / "r.router"
    save_router_file(path, flat, _meta(threshold=0.6))
    forest, meta = load_router_file(path)
    assert meta == _meta(threshold=0.6)
    np.testing.assert_array_equal(forest.predict(X), flat.predict(X))
    router = Router.load(path)
    assert router.backends == ("cheap", "dear") and router.threshold == 0.6
    swapped = Router.load(path, costs={"cheap": 5.0})
    assert swapped.backends == ("dear", "cheap")
    np.testing.assert_array_equal(swapped.probabilities(X)[:, ::-1], router.probabilities(X))
    with pytest.raises(ValueError, match="unknown backends"):
        Router.load(path, costs={"nope": 1.0})
    ev = evaluate_router(router.probabilities(X), RoutingDataset(tuple(map(str, range(len(X)))), ("cheap", "dear"), scores),
                         router.backends, router.threshold)
    assert ev.router.apgr > ev.random_apgr  # in-sample: the forest saw these rows


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path(MARKER[0]),))


MARKER = [""]


def test_malicious_router_files_are_refused_and_run_nothing(tmp_path):
    MARKER[0] = str(tmp_path / "pwned")
    _, flat, _, _ = _toy_forest()
    good = tmp_path / "good.router"
    save_router_file(good, flat, _meta())
    # 1. a pickle dressed as a router file
    pickled = tmp_path / "pickle.router"
    pickled.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ValueError, match="not a .npz archive"):
        Router.load(pickled)
    # 2. a real .npz whose array is a pickled object array
    objarr = tmp_path / "object.router"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(objarr, "w") as zout:
        for name in zin.namelist():
            if name != "value.npy":
                zout.writestr(name, zin.read(name))
        with zout.open("value.npy", "w") as f:
            np.lib.format.write_array(f, np.array([_Boom()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="refused"):
        Router.load(objarr)
    assert not Path(MARKER[0]).exists()
    # 3. forest arrays that would walk out of bounds or loop
    arrays = dict(np.load(good))
    arrays["left"] = arrays["left"].copy()
    arrays["left"][arrays["roots"][1]] = 0  # a child pointing back to an earlier node
    looped = tmp_path / "loop.router"
    with open(looped, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match="points back"):
        Router.load(looped)
    # 4. metadata that is not ours
    arrays = dict(np.load(good))
    arrays["meta"] = np.frombuffer(json.dumps({"format": "other"}).encode(), dtype=np.uint8)
    other = tmp_path / "other.router"
    with open(other, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match="meta.format"):
        Router.load(other)


def test_three_backend_router_routes_by_cost(tmp_path):
    sk, flat, X, scores = _toy_forest(num_backends=3)
    meta = RouterMeta(("mid", "dear", "cheap"), (2.0, 3.0, 1.0), 0.55, label_scheme(3), "bundled:all-MiniLM-L6-v2",
                      "toy@0", 6, {}, {})
    save_router_file(tmp_path / "three.router", flat, meta)
    router = Router.load(tmp_path / "three.router")
    assert router.backends == ("cheap", "mid", "dear")
    probs = router.probabilities(X[:40])
    np.testing.assert_allclose(probs, flat.predict(X[:40])[:, [2, 0, 1]])
    chosen = choose(probs, 0.55)
    first_clear = [next((j for j in range(3) if row[j] >= 0.55), 2) for row in probs]
    assert chosen.tolist() == first_clear
