"""Gateway overhead and a concurrent streaming soak (issue 8), with references in the same run.

    .venv/bin/python bench/bench_gateway.py                          # 500 overhead rounds, 64 clients x 2 min
    .venv/bin/python bench/bench_gateway.py --quick                  # smoke run: 50 rounds, 8 clients x 10 s
    .venv/bin/python bench/bench_gateway.py --clients 64 --duration 300 --backend gemma3-270m

1. Overhead: a 1-token greedy generation (fixed short prompt) through gRPC with the SDK's Client
   against the same call in process (GenerationService.generate on the server's own event loop:
   the same engine loop, tokenizer and engine; no gRPC, no protobuf, no network), interleaved
   round by round so load drift hits both alike. Also shown: the bare engine (engine.generate,
   no engine loop), measured before the server starts. Target: p50(gRPC) - p50(in process)
   <= 2 ms.
2. Soak: N streaming clients (threads with their own Client) send requests back to back for the
   duration (sampled, seeded; 8..32 tokens, EOS ignored so the count is known). Every request
   must end with finish_reason "length" and exactly max_tokens tokens (nothing lost), none may
   hit its 120 s deadline (nothing hung), and the KV pool must be idle afterwards. Reports
   TTFT and end-to-end percentiles and aggregate tokens/s.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from contextlib import aclosing

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _results import record  # noqa: E402 - bench/ is on sys.path when a script runs

from backends.loader import load_engines  # noqa: E402
from backends.sampling_params import SamplingParams  # noqa: E402
from gateway.client import Client  # noqa: E402
from gateway.config import BackendConfig, GatewayConfig  # noqa: E402
from gateway.request import GenerationRequest  # noqa: E402
from gateway.sdk_types import RoutegateError  # noqa: E402
from gateway.server_thread import ServerThread  # noqa: E402

PROMPT = "The capital of France is"
SOAK_PROMPTS = ("Once upon a time", "def fibonacci(n):", "Water boils at", "The three laws of robotics",
                "In 1492,", "A haiku about the sea:", "SELECT * FROM", "My favourite recipe is")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(values: list[float]) -> str:
    return " ".join(f"p{int(q * 100)} {_pct(values, q) * 1e3:7.1f}" for q in (0.5, 0.9, 0.99)) + " ms"


def bench_overhead(running: ServerThread, rounds: int, backend: str, bare_s: list[float]) -> None:
    service = running.server.service
    request = GenerationRequest(prompt=PROMPT, backend=backend, sampling_params=SamplingParams(temperature=0.0, max_tokens=1))

    async def in_process() -> float:
        started = time.perf_counter()
        async with aclosing(service.generate(request)) as chunks:
            async for _ in chunks:
                pass
        return time.perf_counter() - started

    grpc_s, local_s = [], []
    with Client(running.address) as client:
        for _ in range(10):  # warm up both paths (channel, thread pools, allocator)
            client.complete(PROMPT, backend=backend, max_tokens=1, temperature=0.0)
            running.call(in_process())
        for _ in range(rounds):
            started = time.perf_counter()
            client.complete(PROMPT, backend=backend, max_tokens=1, temperature=0.0)
            grpc_s.append(time.perf_counter() - started)
            local_s.append(running.call(in_process()))
    overhead_ms = (statistics.median(grpc_s) - statistics.median(local_s)) * 1e3
    print(f"\n1-token generation, {backend}, {rounds} rounds each")
    print(f"  bare engine.generate      {_ms(bare_s)}")
    print(f"  in process (service)      {_ms(local_s)}")
    print(f"  through gRPC (SDK Client) {_ms(grpc_s)}")
    print(f"  gRPC overhead at p50: {overhead_ms:.2f} ms (target <= 2 ms); "
          f"ratio gRPC/in-process p50 {statistics.median(grpc_s) / statistics.median(local_s):.2f}x")
    record("gateway", f"gRPC overhead, 1-token generation p50 ({backend})", overhead_ms, "in-process call",
           statistics.median(local_s) * 1e3, "<= 2 ms", overhead_ms <= 2.0, "ms")


def bench_soak(running: ServerThread, clients: int, duration_s: float, backend: str) -> None:
    stop_at = time.monotonic() + duration_s
    lock = threading.Lock()
    ttft, e2e, tokens, problems = [], [], [0], []

    def worker(index: int) -> None:
        rng = random.Random(index)
        with Client(running.address, timeout=120, max_retries=0) as client:
            while time.monotonic() < stop_at:
                max_tokens = rng.randint(8, 32)
                started = time.perf_counter()
                count = 0
                try:
                    chunks = list(client.generate(
                        rng.choice(SOAK_PROMPTS), backend=backend, max_tokens=max_tokens, temperature=0.8,
                        seed=rng.randrange(2**31), ignore_eos=True))
                    count = sum(len(c.token_ids) for c in chunks)
                    last = chunks[-1]
                    ok = last.finish_reason == "length" and count == max_tokens == last.usage.completion_tokens
                except RoutegateError as exc:
                    ok, last = False, exc
                finished = time.perf_counter()
                with lock:
                    if not ok:
                        problems.append(f"client {index}: {last!r} ({count}/{max_tokens} tokens)")
                        continue
                    e2e.append(finished - started)
                    tokens[0] += count

    def ttft_probe() -> None:
        # TTFT from one extra client that times its first chunk, so the workers stay simple.
        with Client(running.address, timeout=120, max_retries=0) as client:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                stream = client.generate(PROMPT, backend=backend, max_tokens=4, temperature=0.0, ignore_eos=True)
                next(stream)
                with lock:
                    ttft.append(time.perf_counter() - started)
                for _ in stream:
                    pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=ttft_probe))
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    engine = running.server.engines[backend]
    deadline = time.monotonic() + 30
    while (engine.has_unfinished_requests() or engine.pool.blocks.num_used) and time.monotonic() < deadline:
        time.sleep(0.05)
    idle = not engine.has_unfinished_requests() and engine.pool.blocks.num_used == 0
    print(f"\n{clients} streaming clients for {duration_s:.0f} s, {backend}")
    print(f"  requests completed {len(e2e)}, failed or short {len(problems)}, pool idle afterwards: {idle}")
    if e2e:
        print(f"  end to end  {_ms(e2e)}")
    if ttft:
        print(f"  TTFT (probe client, under load) {_ms(ttft)}")
    print(f"  aggregate {tokens[0] / elapsed:.1f} tok/s")
    for line in problems[:10]:
        print("  PROBLEM", line)
    record("gateway", f"{clients} streaming clients x {duration_s:.0f} s: lost or hung requests", len(problems),
           "none", 0, "0, pool idle after", not problems and idle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="smollm2-135m", choices=("smollm2-135m", "gemma3-270m"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--rounds", type=int, default=500, help="overhead rounds per path")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=120.0, help="soak seconds")
    parser.add_argument("--quick", action="store_true", help="50 rounds, 8 clients for 10 s")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.clients, args.duration = 50, 8, 10.0
    config = GatewayConfig(host="127.0.0.1", port=0, kv_cache_bytes=512 * 1024 * 1024,
                           max_pending_requests=4 * args.clients,
                           backends=(BackendConfig.of(args.backend, f"bundled:{args.backend}", dtype=args.dtype),))
    engine = load_engines([config.backends[0].engine], config.kv_cache_bytes)[args.backend]
    prompt_ids = engine.tokenizer.encode(PROMPT)
    bare_s = []
    for i in range(10 + args.rounds):
        started = time.perf_counter()
        engine.generate(prompt_ids, SamplingParams(temperature=0.0, max_tokens=1))
        if i >= 10:
            bare_s.append(time.perf_counter() - started)
    running = ServerThread(config)
    try:
        running.call(running.server.load_backends(loader=lambda configs, kv_cache_bytes: {args.backend: engine}))
        bench_overhead(running, args.rounds, args.backend, bare_s)
        bench_soak(running, args.clients, args.duration, args.backend)
    finally:
        running.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
