"""dense_kernel.linear vs F.linear on the bundled models' shapes, weights streamed from DRAM.

    .venv/bin/python bench/bench_dense_kernel.py                        # ~4 min, one thread
    .venv/bin/python bench/bench_dense_kernel.py --threads 2 --tokens 1,16 --dtypes bfloat16

Each shape cycles through enough distinct random matrices (> 250 MB) that every weight comes
from DRAM, as in the engine's decode step; kernel and F.linear alternate in one process, and
each row prints the best of --rounds as CPU ms per call, kernel / F.linear (the table in
backends/dense_kernel.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from backends import dense_kernel  # noqa: E402

SHAPES = {  # [N, K] of the fused projections and LM heads
    "SmolLM2 qkv": (960, 576), "SmolLM2 o": (576, 576), "SmolLM2 gate_up": (3072, 576),
    "SmolLM2 down": (576, 1536), "SmolLM2 lm_head": (49152, 576),
    "Gemma qkv": (1536, 640), "Gemma o": (640, 1024), "Gemma gate_up": (4096, 640),
    "Gemma down": (640, 2048), "Gemma lm_head": (262144, 640),
}
STREAM_BYTES = 256e6  # more than any cache, so each call reads its weight from DRAM


def cpu_ms(fn, mats: list[torch.Tensor], x: torch.Tensor, calls: int) -> float:
    start = time.process_time()
    for i in range(calls):
        fn(x, mats[i % len(mats)])
    return (time.process_time() - start) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", default="1,2,4,8,16,32")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not dense_kernel.available():
        raise SystemExit(f"dense kernel unavailable: {dense_kernel.build_error()}")
    torch.set_num_threads(args.threads)
    tokens = [int(t) for t in args.tokens.split(",")]
    for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
        for name, (n, k) in SHAPES.items():
            nbytes = n * k * dtype.itemsize
            mats = [torch.randn(n, k).to(dtype) for _ in range(max(1, min(400, int(STREAM_BYTES // nbytes))))]
            calls = max(len(mats), 20)
            cells = []
            for t in tokens:
                x = torch.randn(t, k).to(dtype)
                times = {"kernel": [], "torch": []}
                for _ in range(args.rounds):
                    times["kernel"].append(cpu_ms(lambda x, w: dense_kernel.linear(x, w), mats, x, calls))
                    times["torch"].append(cpu_ms(lambda x, w: F.linear(x, w), mats, x, calls))
                kernel, ref = min(times["kernel"]), min(times["torch"])
                cells.append(f"T={t} {kernel:.2f}/{ref:.2f} ({ref / kernel:.2f}x)")
            print(f"{str(dtype)[6:]} {name} {n}x{k}: " + "  ".join(cells), flush=True)
            del mats


if __name__ == "__main__":
    main()
