"""Where RouteLLM's MMLU labels are: $ROUTEGATE_ROUTELLM_MMLU, else ../shared/data/routellm/mmlu
next to the checkout (the workplace's layout), else /work/shared/data/routellm/mmlu (a clone
made elsewhere on the same machine). Tests read the data there and never copy it."""

from __future__ import annotations

import os
from pathlib import Path

_CANDIDATES = [
    Path(os.environ["ROUTEGATE_ROUTELLM_MMLU"]) if os.environ.get("ROUTEGATE_ROUTELLM_MMLU") else None,
    Path(__file__).resolve().parents[2] / "shared" / "data" / "routellm" / "mmlu",
    Path("/work/shared/data/routellm/mmlu"),
]
MMLU = next((p for p in _CANDIDATES if p is not None and p.is_dir()), _CANDIDATES[1])
