"""The Redis KV tier (issue 6): TTFT of a prefix served from Redis after a restart, against cold
prefill, on both bundled models; bytes stored per cached token.

    .venv/bin/python bench/bench_redis_tier.py                 # both models, float32 and bfloat16, ~10 min
    .venv/bin/python bench/bench_redis_tier.py --quick         # smoke run: SmolLM2 bfloat16, 256 tokens, 1 rep
    .venv/bin/python bench/bench_redis_tier.py --models gemma3-270m --dtypes bfloat16 --reps 5

It starts its own redis-server on a free port (never the one on 6379). Per model and dtype:
1. A writer engine computes the prefix (1,024 tokens) plus a 16-token tail; its full blocks go
   to Redis behind the request (stored as bfloat16).
2. "After a restart": every measured request runs on a fresh engine with a fresh, empty pool and
   a new connection to Redis (the weights are reused, loading is not what is measured). TTFT is
   add_request until the first generated token comes out of step(); the request is the prefix
   plus a new 16-token tail, so only the prefix can come from Redis.
3. Cold: the same requests on fresh engines without the tier.
Target: Redis TTFT <= 1/5 of cold. Also printed: whether the 8-token greedy continuation from
Redis equals the cold one (bit-exact in bfloat16; float32 K/V stored as bfloat16 is rounded),
and the bytes Redis holds per cached token (blob size / tokens, and Redis' own MEMORY USAGE).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from backends.checkpoint import open_checkpoint  # noqa: E402
from backends.engine import Engine  # noqa: E402
from backends.engine_config import EngineConfig  # noqa: E402
from backends.kv_blob import blob_key  # noqa: E402
from backends.kv_pool import KVPool  # noqa: E402
from backends.kv_tier import open_kv_tier  # noqa: E402
from backends.kv_tier_config import KVTierConfig  # noqa: E402
from backends.loader import load_engine, resolve_model_path  # noqa: E402
from backends.sampling_params import SamplingParams  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

TEXT = open(os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "fidelity_text.txt")).read()
KV_CACHE_BYTES = 256 << 20  # a 1,040-token request needs ~48 MB (SmolLM2, float32)
TAIL = 16
TARGET = 0.2


def run_request(engine: Engine, ids: list[int], max_tokens: int) -> tuple[float, list[int], int]:
    """(seconds to the first token, the greedy tokens, prompt tokens found cached)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    request_id = engine.add_request(ids, params)
    ttft, tokens, cached = None, [], 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id == request_id:
                if out.new_token_ids and ttft is None:
                    ttft = time.perf_counter() - start
                tokens += out.new_token_ids
                cached = out.num_cached_prompt_tokens
    return ttft, tokens, cached


class Bench:
    def __init__(self, name: str, dtype: str, server: RedisServer) -> None:
        config = EngineConfig(name=name, model=f"bundled:{name}", dtype=dtype)
        self.base = load_engine(config, KV_CACHE_BYTES)
        self.weights = open_checkpoint(resolve_model_path(config.model)).fingerprint
        self.server = server
        self.tiers = []

    def engine(self, with_tier: bool) -> Engine:
        """A fresh engine: empty pool, and (with_tier) a new connection to Redis."""
        b = self.base
        # A generous socket timeout: on a busy 2-core machine Redis itself may wait for a core.
        config = KVTierConfig(self.server.url, kv_dtype="bfloat16", timeout_s=5.0)
        tier = open_kv_tier(config) if with_tier else None
        if tier is not None:
            self.tiers.append(tier)
        layout = b.kv_cache.layout
        return Engine(b.config, b.model_config, b.runner.model, b.tokenizer, KVPool([layout], KV_CACHE_BYTES),
                      layout, self.weights, tier)

    def close(self) -> None:
        for tier in self.tiers:
            tier.close(1.0)


def bench_model(name: str, dtype: str, prefix_tokens: int, reps: int, server: RedisServer) -> dict[str, float]:
    bench = Bench(name, dtype, server)
    ids = bench.base.tokenizer.encode("\n\n".join([TEXT] * 3))
    prefix, tails = ids[:prefix_tokens], ids[prefix_tokens:]
    if len(tails) < TAIL * (reps + 1):
        raise ValueError(f"the text has {len(ids)} tokens, too few for a {prefix_tokens}-token prefix")
    server.client().flushall()
    bench.base.generate(ids[-64:], SamplingParams(max_tokens=2, temperature=0.0))  # warm-up, unrelated

    writer = bench.engine(with_tier=True)
    run_request(writer, prefix + tails[-TAIL:], 1)
    tier = bench.tiers[-1]
    expected = (prefix_tokens + TAIL) // bench.base.block_size
    deadline = time.monotonic() + 120
    while tier.status().blocks_written + tier.status().blocks_dropped < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    written = tier.status()

    cold, warm, same = [], [], []
    for r in range(reps):
        request = prefix + tails[TAIL * r:TAIL * (r + 1)]
        t_cold, tokens_cold, _ = run_request(bench.engine(with_tier=False), request, 8)
        engine = bench.engine(with_tier=True)
        t_warm, tokens_warm, cached = run_request(engine, request, 8)
        cold.append(t_cold)
        warm.append(t_warm)
        same.append(tokens_warm == tokens_cold)
    stats = engine.stats()

    client = server.client()
    fp = bench.base.fingerprint
    keys = [k for k in client.scan_iter(match=blob_key(fp, b"").rsplit(":", 1)[0] + ":*")]
    blob_total = sum(client.strlen(k) for k in keys)
    memory_total = sum(client.memory_usage(k) or 0 for k in keys)
    tokens_stored = len(keys) * bench.base.block_size
    pool_bytes_per_token = bench.base.kv_cache.layout.bytes_per_token
    bench.close()
    result = {
        "cold": statistics.median(cold), "redis": statistics.median(warm), "cached": cached,
        "loaded": stats.kv_tier_loaded_tokens, "written": written.blocks_written, "dropped": written.blocks_dropped,
        "same": all(same), "blob_per_token": blob_total / tokens_stored,
        "memory_per_token": memory_total / tokens_stored, "pool_per_token": pool_bytes_per_token,
    }
    ratio = result["redis"] / result["cold"]
    print(f"  {name} {dtype}: cold {result['cold'] * 1000:.0f} ms, from Redis {result['redis'] * 1000:.0f} ms "
          f"= {ratio:.3f}x cold (target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'}); "
          f"{cached} of {prefix_tokens + TAIL} prompt tokens cached; 8 greedy tokens "
          f"{'identical' if result['same'] else 'DIFFERENT'} to cold", flush=True)
    print(f"    blocks written {result['written']} (dropped {result['dropped']}); stored "
          f"{result['blob_per_token']:.0f} B/token as blobs, {result['memory_per_token']:.0f} B/token "
          f"in Redis memory; the pool holds {pool_bytes_per_token} B/token ({dtype})", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--prefix-tokens", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="SmolLM2 bfloat16, 256 tokens, 1 repetition")
    args = parser.parse_args()
    if args.quick:
        args.models, args.dtypes, args.prefix_tokens, args.reps = ["smollm2-135m"], ["bfloat16"], 256, 1
    print(f"Redis tier: TTFT of a {args.prefix_tokens}-token prefix + {TAIL} new tokens after a restart "
          f"(median of {args.reps}); target <= {TARGET}x cold", flush=True)
    with RedisServer() as server:
        results = {(m, d): bench_model(m, d, args.prefix_tokens, args.reps, server)
                   for m in args.models for d in args.dtypes}
    print("\n| model | dtype | cold TTFT | TTFT from Redis | ratio (target <= 0.2) | same 8 tokens | "
          "stored B/token | Redis memory B/token |")
    print("|---|---|---|---|---|---|---|---|")
    for (model, dtype), r in results.items():
        print(f"| {model} | {dtype} | {r['cold'] * 1000:.0f} ms | {r['redis'] * 1000:.0f} ms | "
              f"{r['redis'] / r['cold']:.3f} | {'yes' if r['same'] else 'no'} | {r['blob_per_token']:.0f} | "
              f"{r['memory_per_token']:.0f} |")


if __name__ == "__main__":
    main()
