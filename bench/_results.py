"""One row per measured target, collected across the bench scripts of one `make bench` run.

Each script calls `record(...)` next to its own printout; when ROUTEGATE_BENCH_RESULTS names a
file (make bench sets it), the row is appended there as JSON and `bench/_report.py` prints all
rows as one table at the end. Run alone, a script just prints its own tables.
"""

from __future__ import annotations

import json
import os


def record(area: str, metric: str, ours: float, reference: str, reference_value: float | None,
           target: str, met: bool | None, unit: str = "") -> None:
    """area: e.g. "k-quant engine"; metric: what was measured (model, load); ours and the reference's
    value in `unit`; target: as the issue states it ("ratio >= 1.5x"); met: None = no target."""
    path = os.environ.get("ROUTEGATE_BENCH_RESULTS")
    if not path:
        return
    # Scripts compute with numpy: float() and bool() turn its scalars into what JSON can hold.
    ours = float(ours)
    reference_value = None if reference_value is None else float(reference_value)
    met = None if met is None else bool(met)
    ratio = ours / reference_value if reference_value else None
    row = dict(area=area, metric=metric, ours=ours, unit=unit, reference=reference,
               reference_value=reference_value, ratio=ratio, target=target, met=met)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
