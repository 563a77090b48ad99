"""Continuous batching, prefix caching and the shared KV pool (issue 3), with references in the same run.

    .venv/bin/python bench/bench_batching.py                  # both bundled models, ~15 minutes
    .venv/bin/python bench/bench_batching.py --quick          # smoke run: 16 tokens, 1 and 4 concurrent
    .venv/bin/python bench/bench_batching.py --models smollm2-135m --concurrency 1 16

1. Aggregate decode tok/s with N concurrent requests (short distinct prompts, greedy, EOS
   ignored): our full-precision engine (float32, bfloat16) against HF transformers' batched
   generate() (float32, the same GGUF, left padding) and llama-cpp-python (2 threads, no batching:
   requests are served one at a time, so its aggregate is its single-stream speed at every N).
   All three get the same prompt token ids. Times include the prompts' prefill. All systems are
   loaded side by side and run in alternating rounds (--rounds, best of each). Target: >= 3x
   transformers at 16 concurrent.
2. TTFT (add_request until the first generated token comes out of step()) of a 1,024-token prefix
   plus 16 new tokens, with the prefix cached, against the same request on an engine with prefix
   caching off. Target: <= 1/10 of cold.
3. KV waste at steady state: both models (float32) on one pool, each engine keeping a mix of
   prompt lengths in flight. Waste = allocated pages' bytes not holding a computed token (unfilled
   slots of each sequence's last block, plus each page's rounding remainder), as a share of the
   allocated bytes. Target: <= 4%.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF conversion progress bars

import torch

from backends.engine import Engine
from backends.engine_config import EngineConfig
from backends.loader import load_engine, load_engines, resolve_model_path
from backends.sampling_params import SamplingParams
from _results import record  # bench/ is on sys.path when a script runs

TEXT = open(os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "fidelity_text.txt")).read()
TOPICS = ["lighthouses", "volcanoes", "bread", "chess", "glaciers", "bridges", "owls", "tides",
          "copper", "jazz", "deserts", "comets", "silk", "bees", "clocks", "rivers"]
KV_CACHE_BYTES = 1 << 30  # ample for every workload here; pages are touched only when used
GREEDY = dict(temperature=0.0, ignore_eos=True)


def distinct_prompts(engine: Engine, n: int) -> list[list[int]]:
    """n short prompts (about 10-15 tokens), no two alike beyond a few tokens."""
    return [engine.tokenizer.encode(f"Note {i}: a few facts about {TOPICS[i % len(TOPICS)]}, part {i // 16}.")
            for i in range(n)]


# --- 1. aggregate decode ---------------------------------------------------------------------

def decode_ours(engine: Engine, prompts: list[list[int]], max_tokens: int) -> float:
    start = time.perf_counter()
    for ids in prompts:
        engine.add_request(ids, SamplingParams(max_tokens=max_tokens, **GREEDY))
    num_tokens = 0
    while engine.has_unfinished_requests():
        num_tokens += sum(len(out.new_token_ids) for out in engine.step())
    elapsed = time.perf_counter() - start
    if num_tokens != len(prompts) * max_tokens:
        raise RuntimeError(f"expected {len(prompts) * max_tokens} tokens, got {num_tokens}")
    return num_tokens / elapsed


def decode_hf(model, prompts: list[list[int]], max_tokens: int, pad_id: int) -> float:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])  # left padding
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens,
                             min_new_tokens=max_tokens, do_sample=False, pad_token_id=pad_id)
    elapsed = time.perf_counter() - start
    return (out.shape[1] - width) * len(prompts) / elapsed


def decode_llama(llm, prompts: list[list[int]], max_tokens: int) -> float:
    start = time.perf_counter()
    for ids in prompts:  # one at a time: llama-cpp-python has no batching of requests
        for i, _ in enumerate(llm.generate(ids, top_k=1, temp=0.0, reset=True)):
            if i + 1 == max_tokens:
                break
    return len(prompts) * max_tokens / (time.perf_counter() - start)


def bench_decode(name: str, dtypes: list[str], levels: list[int], max_tokens: int,
                 hf_tokens_at_64: int, rounds: int) -> dict[tuple[str, int], float]:
    """tok/s keyed by (system, concurrency); systems: each dtype, "hf", "llama.cpp".

    Every system is loaded side by side and each round runs all of them at every level in turn;
    a system's number is its best round. This host's speed drifts over minutes, and systems run
    one after the other would each meet a different machine. Prefix caching is off on our
    engines, so every round's requests are computed from scratch."""
    import transformers

    from backends.llama_cpp_reference import load_llama_cpp  # weight repacking off: see its NOTE

    ours = {d: load_engine(EngineConfig(name=name, model=f"bundled:{name}", dtype=d, enable_prefix_caching=False),
                           KV_CACHE_BYTES) for d in dtypes}
    first = next(iter(ours.values()))
    prompts = distinct_prompts(first, 1 + max(levels))  # prompt 0 warms up
    batches = {n: prompts[1:1 + n] for n in levels}
    transformers.utils.logging.disable_progress_bar()
    path = resolve_model_path(f"bundled:{name}")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    llm = load_llama_cpp(path, n_threads=2, n_ctx=512, logits_all=False)

    for engine in ours.values():
        engine.generate(prompts[0], SamplingParams(max_tokens=4, **GREEDY))
    decode_hf(model, prompts[:1], 4, pad_id)
    decode_llama(llm, prompts[:1], 4)
    results: dict[tuple[str, int], float] = {}

    def keep(key: tuple[str, int], value: float, label: str) -> None:
        results[key] = max(results.get(key, 0.0), value)
        print(f"  {name} {label} x{key[1]}: {value:.1f} tok/s", flush=True)

    for r in range(rounds):
        print(f"  {name} round {r + 1} of {rounds}", flush=True)
        for n in levels:
            for d, engine in ours.items():
                keep((d, n), decode_ours(engine, batches[n], max_tokens), f"ours {d}")
            tokens = hf_tokens_at_64 if n >= 64 else max_tokens
            keep(("hf", n), decode_hf(model, batches[n], tokens, pad_id), f"HF ({tokens} tokens each)")
        # llama.cpp serves one request at a time: 4 requests back to back give its speed at every N.
        keep(("llama.cpp", 1), decode_llama(llm, batches[max(levels)][:4], max_tokens), "llama.cpp (sequential)")
    for n in levels:
        results["llama.cpp", n] = results["llama.cpp", 1]
    del ours, first, model, llm
    gc.collect()
    return results


# --- 2. TTFT with a cached prefix ------------------------------------------------------------

def time_to_first_token(engine: Engine, ids: list[int]) -> tuple[float, int]:
    """Seconds from add_request to the first generated token, and the prompt tokens it found cached."""
    start = time.perf_counter()
    request_id = engine.add_request(ids, SamplingParams(max_tokens=1, **GREEDY))
    while True:
        for out in engine.step():
            if out.request_id == request_id and out.new_token_ids:
                elapsed = time.perf_counter() - start
                while engine.has_unfinished_requests():
                    engine.step()
                return elapsed, out.num_cached_prompt_tokens


def bench_ttft(name: str, dtype: str, prefix_tokens: int, reps: int) -> dict[str, float]:
    results = {}
    for caching in (False, True):
        engine = load_engine(EngineConfig(name=name, model=f"bundled:{name}", dtype=dtype,
                                          enable_prefix_caching=caching), KV_CACHE_BYTES)
        # The fixture is ~700 tokens; three copies give a long enough prompt (no hash repeats:
        # block hashes chain from the start, so a copy of earlier text is no cache hit).
        text_ids = engine.tokenizer.encode("\n\n".join([TEXT] * 3))
        prefix, tails = text_ids[:prefix_tokens], text_ids[prefix_tokens:]
        if len(tails) < 16 * (reps + 1):
            raise ValueError(f"the text has {len(text_ids)} tokens, too few for a {prefix_tokens}-token prefix")
        engine.generate(text_ids[-64:], SamplingParams(max_tokens=2, **GREEDY))  # warm-up, unrelated
        if caching:  # an earlier request brought the prefix into the cache
            engine.generate(prefix + tails[-16:], SamplingParams(max_tokens=1, **GREEDY))
        # A fresh 16-token tail each repetition, so only the prefix can be a cache hit.
        runs = [time_to_first_token(engine, prefix + tails[16 * r:16 * (r + 1)]) for r in range(reps)]
        key = "warm" if caching else "cold"
        results[key] = statistics.median(t for t, _ in runs)
        results[key + "_cached_tokens"] = runs[0][1]
        print(f"  {name} {dtype} TTFT {key}: {results[key] * 1000:.0f} ms "
              f"({runs[0][1]} of {prefix_tokens + 16} prompt tokens cached)", flush=True)
        del engine
        gc.collect()
    return results


# --- 3. KV waste on one shared pool ------------------------------------------------------------

def kv_waste(engines: list[Engine]) -> tuple[int, int, int, float]:
    """(allocated bytes, bytes in unfilled slots, bytes lost to page rounding, mean computed
    tokens per running sequence) of the pool's held pages, from engine.stats()."""
    pool = engines[0].pool
    stats = [e.stats() for e in engines]
    if sum(s.blocks_held for s in stats) != stats[0].pool_blocks_used:
        raise RuntimeError("running sequences do not account for every held page")
    unfilled = sum((s.slots_allocated - s.slots_filled) * e.kv_cache.layout.bytes_per_token
                   for s, e in zip(stats, engines))
    rounding = sum(round(s.blocks_held * s.page_waste * pool.page_bytes) for s in stats)
    seq_tokens = sum(s.slots_filled for s in stats) / max(1, sum(s.num_running for s in stats))
    return stats[0].pool_blocks_used * pool.page_bytes, unfilled, rounding, seq_tokens


def bench_waste(names: list[str], in_flight: int, warmup_steps: int, sample_steps: int) -> dict:
    configs = [EngineConfig(name=n, model=f"bundled:{n}") for n in names]
    engines = list(load_engines(configs, KV_CACHE_BYTES).values())
    rng = random.Random(0)

    def add(engine: Engine) -> None:
        # Prompt lengths log-uniform in 16..1024 tokens, 16..128 new tokens; random ids, so no
        # two requests share a block and the prefix cache cannot hide waste.
        length = int(16 * 64 ** rng.random())
        vocab = engine.model_config.vocab_size
        ids = [rng.randrange(256, vocab) for _ in range(length)]
        engine.add_request(ids, SamplingParams(max_tokens=rng.randint(16, 128), **GREEDY))

    for engine in engines:
        for _ in range(in_flight):
            add(engine)
    samples = []
    for step in range(warmup_steps + sample_steps):
        for engine in engines:
            for out in engine.step():
                if out.finished:
                    add(engine)  # keep the load constant: one leaves, one joins
        if step >= warmup_steps:
            samples.append(kv_waste(engines))
    allocated = sum(s[0] for s in samples)
    pool = engines[0].pool
    result = {
        "allocated_mib": allocated / len(samples) / 2**20,
        "slots_pct": 100 * sum(s[1] for s in samples) / allocated,
        "rounding_pct": 100 * sum(s[2] for s in samples) / allocated,
        "max_pct": max(100 * (s[1] + s[2]) / s[0] for s in samples),
        "seq_tokens": statistics.mean(s[3] for s in samples),
        "page_bytes": pool.page_bytes,
        "page_waste": {e.name: (e.block_size, 100 * pool.page_waste(e.kv_cache.layout)) for e in engines},
    }
    result["total_pct"] = result["slots_pct"] + result["rounding_pct"]
    print(f"  waste {result['total_pct']:.2f}% of {result['allocated_mib']:.0f} MiB allocated", flush=True)
    return result


# --- the table -------------------------------------------------------------------------------

SHORT = {"float32": "fp32", "bfloat16": "bf16"}


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--hf-tokens-at-64", type=int, default=64,
                        help="new tokens per request for HF at >= 64 concurrent (it is the slowest part)")
    parser.add_argument("--prefix-tokens", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of every system at every level; each system's best counts")
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 tokens, 1 and 4 concurrent, 1 round")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    # Waste: 60 warm-up steps (the first requests' prefills and about one request lifetime), then
    # 40 sampled steps.
    levels, tokens, hf64, reps, warmup, samples, rounds = (args.concurrency, args.decode_tokens,
                                                           args.hf_tokens_at_64, 3, 60, 40, args.rounds)
    if args.quick:
        levels, tokens, hf64, reps, warmup, samples, rounds = [c for c in levels if c <= 4] or [1], 16, 16, 1, 8, 8, 1
    torch.set_num_threads(2)

    started = time.perf_counter()
    print("1. aggregate decode", flush=True)
    decode = {name: bench_decode(name, args.dtypes, levels, tokens, hf64, rounds) for name in args.models}
    print(f"2. TTFT with a cached prefix ({time.perf_counter() - started:.0f} s so far)", flush=True)
    ttft = {(name, d): bench_ttft(name, d, args.prefix_tokens, reps) for name in args.models for d in args.dtypes}
    print(f"3. KV waste, the models on one pool ({time.perf_counter() - started:.0f} s so far)", flush=True)
    waste = bench_waste(args.models, in_flight=16, warmup_steps=warmup, sample_steps=samples)
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)

    print(f"\n1. aggregate decode tok/s, {tokens} greedy tokens a request"
          + (f" (HF: {hf64} at 64 concurrent)" if hf64 != tokens and 64 in levels else "")
          + "; ratios against HF fp32; target >= 3x HF at 16 concurrent")
    cells = "".join(f" {'ours ' + SHORT[d]:>9} {'x HF':>6}" for d in args.dtypes)
    print(f"{'model':13} {'conc':>4} {'HF fp32':>8} {'llama.cpp':>9}{cells}  target")
    for name in args.models:
        r = decode[name]
        for n in levels:
            row = "".join(f" {r[d, n]:9.1f} {r[d, n] / r['hf', n]:5.2f}x" for d in args.dtypes)
            target = ("  >= 3x: " + ", ".join(f"{SHORT[d]} {verdict(r[d, n] / r['hf', n], 3, True)}"
                                              for d in args.dtypes)) if n == 16 else ""
            print(f"{name:13} {n:4d} {r['hf', n]:8.1f} {r['llama.cpp', n]:9.1f}{row}{target}")
            for d in args.dtypes:
                record("batching", f"{name} {d} decode x{n} concurrent", r[d, n], "HF batched fp32", r["hf", n],
                       ">= 3x HF at 16" if n == 16 else "none", r[d, n] / r["hf", n] >= 3 if n == 16 else None, "tok/s")
    print(f"\n2. TTFT, {args.prefix_tokens}-token prefix + 16 new tokens (median of {reps}); target <= 0.10x cold")
    print(f"{'model':13} {'dtype':9} {'cold ms':>8} {'cached ms':>9} {'ratio':>6}  {'cached tok':>10}  target")
    for (name, d), r in ttft.items():
        ratio = r["warm"] / r["cold"]
        print(f"{name:13} {d:9} {r['cold'] * 1000:8.0f} {r['warm'] * 1000:9.0f} {ratio:5.3f}x  "
              f"{r['warm_cached_tokens']:10d}  <= 0.10x: {verdict(ratio, 0.10, False)}")
        record("prefix cache", f"{name} {d} TTFT, 1k cached prefix", r["warm"] * 1000, "same request cold",
               r["cold"] * 1000, "<= 0.10x cold", ratio <= 0.10, "ms")
    blocks = ", ".join(f"{n} {bs} tok/page, rounding {w:.2f}%" for n, (bs, w) in waste["page_waste"].items())
    print(f"\n3. KV waste, {' + '.join(args.models)} (float32) on one pool, 16 requests in flight each, "
          f"mean of {samples} steps after {warmup}; page {waste['page_bytes']} B ({blocks})")
    print(f"{'tokens/seq':>10} {'allocated MiB':>13} {'unfilled slots':>14} {'page rounding':>13} {'total':>7} "
          f"{'worst step':>10}  target")
    print(f"{waste['seq_tokens']:10.0f} {waste['allocated_mib']:13.1f} {waste['slots_pct']:13.2f}% "
          f"{waste['rounding_pct']:12.2f}% "
          f"{waste['total_pct']:6.2f}% {waste['max_pct']:9.2f}%  <= 4%: {verdict(waste['total_pct'], 4, False)}")
    record("KV pool", "waste, both models on one pool", waste["total_pct"], "-", None, "<= 4% of allocated",
           waste["total_pct"] <= 4, "%")
    print("unfilled slots: the part of each sequence's last page past its computed tokens (about half a "
          "page a sequence,\nso it shrinks as tokens/seq grows); page rounding: pool.page_waste(layout) "
          "of every held page.")


if __name__ == "__main__":
    main()
