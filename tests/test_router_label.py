"""`routegate router label`'s rule on a real engine (SmolLM2 under two backend names, so the
outcomes are known): reference correctness, and the likelihood of the strongest one's answer."""

import json

import pytest

from backends.engine_config import EngineConfig
from backends.loader import load_engines
from router.labeling import EngineBackend, LabelPrompt, label_records, load_prompts


@pytest.fixture(scope="module")
def backends():
    engines = load_engines([EngineConfig(name="cheap", model="bundled:smollm2-135m"),
                            EngineConfig(name="strong", model="bundled:smollm2-135m")], kv_cache_bytes=64 << 20)
    return [EngineBackend(engines["cheap"]), EngineBackend(engines["strong"])]


def test_reference_rule_and_likelihood_rule(backends, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "The capital of France is", "reference": "Paris"}) + "\n"
                       + json.dumps({"prompt": "The capital of France is"}) + "\n")
    items = load_prompts(prompts)
    assert items == [LabelPrompt("The capital of France is", "Paris"), LabelPrompt("The capital of France is")]
    ref, free = list(label_records(items, backends, max_tokens=2, agree_at=-1.0))
    # SmolLM2's greedy continuation is " Paris." (as llama.cpp gives): both are right
    assert ref["answers"] == {"cheap": " Paris.", "strong": " Paris."}
    assert ref["scores"] == {"cheap": 1.0, "strong": 1.0} and ref["rule"] == "reference"
    assert free["answer"] == " Paris." and free["rule"] == "likelihood"
    lp = free["mean_logprob"]["cheap"]
    assert free["scores"] == {"cheap": float(lp >= -1.0), "strong": 1.0}
    # greedy tokens are each the most likely: no other continuation of the same length scores higher
    assert lp > backends[0].mean_logprob("The capital of France is", " London.")
    assert lp > backends[0].mean_logprob("The capital of France is", " Paris!")
