"""`make reliability`: the soak, fault and fuzz cases against real gateways on 127.0.0.1.

    python -m reliability.run                          # all cases: soak 10 min, faults, fuzz 10,000
    python -m reliability.run --cases fuzz --fuzz-requests 500
    python -m reliability.run --soak-seconds 60        # a short soak

Each case starts its own `routegate serve` (and its own redis-server), stops by itself, and
prints one line: load held, faults survived, inputs tried, requests lost. Exit status 1 if any
case failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="soak,faults,fuzz", help="comma-separated: soak, faults, fuzz")
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--soak-clients", type=int, default=64)
    parser.add_argument("--fault-seconds", type=float, default=60.0)
    parser.add_argument("--fuzz-requests", type=int, default=10_000)
    args = parser.parse_args()
    from reliability import cases

    runners = {
        "soak": lambda: cases.soak(args.soak_seconds, args.soak_clients),
        "faults": lambda: cases.faults(args.fault_seconds),
        "fuzz": lambda: cases.fuzz(args.fuzz_requests),
    }
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [n for n in names if n not in runners]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(runners)}")
    results = []
    for name in names:
        started = time.monotonic()
        result = runners[name]()
        results.append(result)
        print(f"{result.line()}  [{time.monotonic() - started:.0f} s]", flush=True)
    return 0 if all(r.held for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
