"""Full-precision engine vs HF transformers: load time, prefill and decode speed, same run.

    .venv/bin/python bench/bench_engine.py                  # both bundled models, ~6 minutes
    .venv/bin/python bench/bench_engine.py --models smollm2-135m --decode-tokens 64

Prints one row per model and metric: our full-precision engine in float32 and in bfloat16,
HF transformers (float32, loading the same GGUF), the ratios, and the target (issue 2: decode
>= 3x transformers, load <= 1/4 of its time). Greedy, batch 1, 2 threads. Load times include
dequantizing the GGUF but not importing torch.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from backends.engine_config import EngineConfig
from backends.loader import load_engine, resolve_model_path
from backends.sampling_params import SamplingParams
from _results import record  # bench/ is on sys.path when a script runs

TEXT = open(os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "fidelity_text.txt")).read()


def bench_ours(name: str, dtype: str, prefill_tokens: int, decode_tokens: int) -> dict[str, float]:
    start = time.perf_counter()
    engine = load_engine(EngineConfig(name=name, model=f"bundled:{name}", dtype=dtype, max_model_len=2048))
    load = time.perf_counter() - start
    ids = engine.tokenizer.encode(TEXT)[:prefill_tokens]
    engine.score(ids[:32])  # warm-up
    start = time.perf_counter()
    engine.generate(ids, SamplingParams(temperature=0.0, max_tokens=1))
    prefill = len(ids) / (time.perf_counter() - start)
    prompt = engine.tokenizer.encode("The history of the lighthouse")
    engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    start = time.perf_counter()
    engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=decode_tokens, ignore_eos=True))
    elapsed = time.perf_counter() - start
    # Both sides include the short prompt's prefill (a few tokens), as HF's generate() does.
    decode = decode_tokens / elapsed
    del engine
    gc.collect()
    return {"load_s": load, "prefill_tok_s": prefill, "decode_tok_s": decode}


def bench_hf(name: str, prefill_tokens: int, decode_tokens: int) -> dict[str, float]:
    import transformers

    path = resolve_model_path(f"bundled:{name}")
    start = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    load = time.perf_counter() - start
    ids = tok(TEXT, return_tensors="pt").input_ids[:, :prefill_tokens]
    with torch.inference_mode():
        model(ids[:, :32])
        start = time.perf_counter()
        model(ids)
        prefill = ids.shape[1] / (time.perf_counter() - start)
        prompt = tok("The history of the lighthouse", return_tensors="pt").input_ids
        model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        start = time.perf_counter()
        model.generate(prompt, max_new_tokens=decode_tokens, min_new_tokens=decode_tokens, do_sample=False)
        decode = decode_tokens / (time.perf_counter() - start)
    del model
    gc.collect()
    return {"load_s": load, "prefill_tok_s": prefill, "decode_tok_s": decode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    header = "".join(f" {'ours ' + d[:4]:>10} {'ratio':>7}" for d in args.dtypes)
    print(f"{'model':14} {'metric':14} {'HF fp32':>10}{header}  target", flush=True)
    for name in args.models:
        ours = {d: bench_ours(name, d, args.prefill_tokens, args.decode_tokens) for d in args.dtypes}
        ref = bench_hf(name, args.prefill_tokens, args.decode_tokens)
        for metric, target in (("load_s", "<= 0.25x"), ("prefill_tok_s", "-"), ("decode_tok_s", ">= 3x")):
            cells = "".join(f" {ours[d][metric]:10.2f} {ours[d][metric] / ref[metric]:6.2f}x" for d in args.dtypes)
            print(f"{name:14} {metric:14} {ref[metric]:10.2f}{cells}  {target}", flush=True)
            for d in args.dtypes:
                ratio = ours[d][metric] / ref[metric]
                met = {"load_s": ratio <= 0.25, "decode_tok_s": ratio >= 3.0}.get(metric)
                record("full-precision", f"{name} {d} {metric}", ours[d][metric], "HF transformers fp32",
                       ref[metric], target if target != "-" else "none", met)


if __name__ == "__main__":
    main()
