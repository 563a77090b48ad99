"""In-process engines for `routegate router label`: bundled backends by name, or the local
backends of a gateway config. Imported lazily: it pulls in torch model code."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from router.labeling import EngineBackend


def load_label_backends(names: Sequence[str], config: Path | None = None) -> list[EngineBackend]:
    """EngineBackends in the order of `names` (cheapest first), sharing one KV pool."""
    from backends.engine_config import EngineConfig
    from backends.loader import BUNDLED_MODELS, load_engines

    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"--backends must name at least two different backends, got {list(names)}")
    if config is not None:
        from gateway.config import load_config

        known = {b.name: b.engine for b in load_config(config).backends if b.is_local}
    else:
        known = {name: EngineConfig(name=name, model=f"bundled:{name}") for name in BUNDLED_MODELS}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"unknown local backends {missing}; known: {sorted(known)}")
    engines = load_engines([known[n] for n in names], kv_cache_bytes=256 << 20)
    return [EngineBackend(engines[n]) for n in names]
