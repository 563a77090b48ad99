"""Training labels with no judge: run the local backends on the prompts.

The rule (what `routegate router label` writes as each backend's score):
  * With a reference answer: a backend scores 1 when its greedy completion, stripped of leading
    whitespace, starts with the stripped reference (case-insensitive), else 0.
  * Without one: the strongest backend's greedy completion is taken as the answer to match; it
    scores 1. Each cheaper backend scores 1 when its mean per-token log-probability of that
    completion (teacher-forced after the same prompt, in its own tokenization) is at least
    `agree_at` (default -1.0, a geometric-mean token probability of about 0.37), else 0. The raw
    mean log-probabilities are written too, so the cut can be moved without re-running.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

DEFAULT_AGREE_AT = -1.0
DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True)
class LabelPrompt:
    prompt: str
    reference: str | None = None  # the right answer, when known


def load_prompts(path: str | Path, limit: int | None = None) -> list[LabelPrompt]:
    """.jsonl ({"prompt", optional "reference"}), .txt (one prompt per line), or a RouteLLM/RoRF
    CSV file or directory (prompts only; their scores are someone else's models)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        out = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    obj = json.loads(line)
                    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                        raise ValueError(f"{path}: line {n}: need {{'prompt': str, 'reference': str (optional)}}")
                    ref = obj.get("reference")
                    out.append(LabelPrompt(obj["prompt"], None if ref is None else str(ref)))
    elif path.suffix == ".txt":
        out = [LabelPrompt(line.rstrip("\n")) for line in open(path, encoding="utf-8") if line.strip()]
    else:
        from router.datasets import load_dataset

        out = [LabelPrompt(p) for p in load_dataset(path).prompts]
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out[:limit] if limit else out


class EngineBackend:
    """Greedy completion and teacher-forced likelihood on one in-process engine."""

    def __init__(self, engine):
        self.engine = engine
        self.name = engine.name

    def complete(self, prompts: Sequence[str], max_tokens: int) -> list[str]:
        """Greedy completions, all prompts in flight at once (the engine batches them)."""
        from backends.sampling_params import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        ids = [self.engine.add_request(self._prompt_ids(p), params) for p in prompts]
        tokens: dict[str, list[int]] = {i: [] for i in ids}
        pending = set(ids)
        while pending:
            for out in self.engine.step():
                if out.request_id in tokens:
                    tokens[out.request_id].extend(out.new_token_ids)
                    if out.finished:
                        pending.discard(out.request_id)
        eos = self.engine.tokenizer.eos_token_ids
        return [self.engine.tokenizer.decode([t for t in tokens[i] if t not in eos]) for i in ids]

    def mean_logprob(self, prompt: str, continuation: str) -> float:
        """Mean log-probability per token of `continuation` right after `prompt`."""
        import torch

        prompt_ids = self._prompt_ids(prompt)
        cont_ids = self.engine.tokenizer.encode(continuation, add_special=False)
        if not cont_ids:
            return 0.0  # an empty answer is matched trivially
        logits = self.engine.score(prompt_ids + cont_ids)
        logprobs = torch.log_softmax(logits[len(prompt_ids) - 1:-1].float(), dim=-1)
        return float(logprobs.gather(1, torch.tensor(cont_ids)[:, None]).mean())

    def _prompt_ids(self, prompt: str) -> list[int]:
        ids = self.engine.tokenizer.encode(prompt, add_special=True)
        # Long prompts keep their end (where the question is), leaving room for the answer.
        room = self.engine.max_model_len - DEFAULT_MAX_TOKENS * 4
        return ids[-room:] if len(ids) > room else ids


def label_records(prompts: Sequence[LabelPrompt], backends: Sequence, max_tokens: int = DEFAULT_MAX_TOKENS,
                  agree_at: float = DEFAULT_AGREE_AT, progress: Callable[[], None] | None = None,
                  batch_size: int = 16) -> Iterator[dict]:
    """One JSONL record per prompt: {"prompt", "scores": {backend: 0/1}, ...}. `backends` are
    cheapest first; the last is the strongest (the answer to match when there is no reference)."""
    if len(backends) < 2:
        raise ValueError(f"labeling needs at least two backends, got {len(backends)}")
    strongest = backends[-1]
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        if all(item.reference is not None for item in batch):
            answers = {b.name: b.complete([item.prompt for item in batch], max_tokens) for b in backends}
        else:
            answers = {strongest.name: strongest.complete([item.prompt for item in batch], max_tokens)}
        for k, item in enumerate(batch):
            yield _record(item, k, answers, backends, strongest, max_tokens, agree_at)
            if progress:
                progress()


def _record(item: LabelPrompt, k: int, answers: dict, backends: Sequence, strongest, max_tokens: int,
            agree_at: float) -> dict:
    if item.reference is not None:
        mine = {b.name: answers[b.name][k] if b.name in answers else b.complete([item.prompt], max_tokens)[0]
                for b in backends}
        scores = {n: float(_matches(a, item.reference)) for n, a in mine.items()}
        return {"prompt": item.prompt, "scores": scores, "rule": "reference", "reference": item.reference,
                "answers": mine}
    answer = answers[strongest.name][k]
    likelihood = {b.name: b.mean_logprob(item.prompt, answer) for b in backends[:-1]}
    scores = {n: float(lp >= agree_at) for n, lp in likelihood.items()}
    scores[strongest.name] = 1.0
    return {"prompt": item.prompt, "scores": scores, "rule": "likelihood", "agree_at": agree_at,
            "answer": answer, "mean_logprob": likelihood}


def _matches(answer: str, reference: str) -> bool:
    ref = reference.strip().lower()
    return bool(ref) and answer.strip().lower().startswith(ref)


def write_jsonl(path: str | Path, records) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            n += 1
    return n
