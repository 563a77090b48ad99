"""Print the rows `bench/_results.record` collected in one `make bench` run as one table.

    python bench/_report.py RESULTS.jsonl
"""

from __future__ import annotations

import json
import platform
import sys
import time


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def main(path: str) -> int:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        print("no benchmark recorded any result")
        return 1
    print(f"\nroutegate benchmark summary, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{len(rows)} results (ratio = ours / reference, measured in the same run)")
    header = f"{'area':18} {'metric':46} {'ours':>9} {'reference':>20} {'ref value':>9} {'ratio':>7}  {'target':26} met"
    print(header)
    print("-" * len(header))
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        print(f"{r['area'][:18]:18} {(r['metric'] + (' ' + r['unit'] if r['unit'] else ''))[:46]:46} "
              f"{_num(r['ours']):>9} {r['reference'][:20]:>20} {_num(r['reference_value']):>9} {ratio:>7}  "
              f"{r['target'][:26]:26} {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
