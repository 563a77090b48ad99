"""The compiled CPU row sampler (sampling_kernel.cpp), built on first use.

    from backends import sampling_kernel
    if sampling_kernel.available():
        token_ids, logprobs, top_ids, top_lps = sampling_kernel.sample_rows(logits, fparams, iparams, ...)

backends/sampler.py calls it for float32 logits on the CPU and keeps its torch path for every
other case. torch.utils.cpp_extension compiles the C++ once per source version and CPU into
TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions). Without a compiler the sampler runs its
torch path; `available()` says which one is in use and `build_error()` why. ROUTEGATE_NO_KERNELS=1
forces the torch path (tests compare both).
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
from types import ModuleType

import torch

_SOURCE = os.path.join(os.path.dirname(__file__), "sampling_kernel.cpp")
_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None
_tried = False


def _build_name() -> str:
    """Extension name keyed by the source and the CPU's flags (-march=native builds are per CPU)."""
    digest = hashlib.sha256()
    with open(_SOURCE, "rb") as f:
        digest.update(f.read())
    digest.update(platform.machine().encode())
    try:
        with open("/proc/cpuinfo") as f:
            digest.update(next((line for line in f if line.startswith("flags")), "").encode())
    except OSError:
        pass
    return f"routegate_sampling_kernel_{digest.hexdigest()[:12]}"


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    # -ffp-contract=off: a weight recomputed by a scalar loop must equal the vectorized one summed
    # before (the kernel fuses multiply-adds only where it writes std::fma itself).
    # -fopenmp: at::parallel_for runs on torch's own OpenMP pool.
    return cpp_extension.load(
        name=_build_name(),
        sources=[_SOURCE],
        extra_cflags=["-O3", "-march=native", "-std=c++20", "-fopenmp", "-ffp-contract=off",
                      "-mprefer-vector-width=512"],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def _load() -> ModuleType | None:
    global _module, _error, _tried
    with _lock:
        if not _tried:
            _tried = True
            if os.environ.get("ROUTEGATE_NO_KERNELS") == "1":
                _error = "disabled by ROUTEGATE_NO_KERNELS=1"
            else:
                try:
                    _module = _build()
                except Exception as exc:  # no compiler, no ninja, no headers: fall back, say why
                    _error = f"{type(exc).__name__}: {exc}"
    return _module


def available() -> bool:
    """True when the compiled sampler is loaded (building it now if needed)."""
    return _load() is not None


def build_error() -> str | None:
    """Why the compiled sampler is not in use, or None when it is."""
    _load()
    return _error


def sample_rows(logits: torch.Tensor, fparams: torch.Tensor, iparams: torch.Tensor,
                poly: tuple[float, ...], min_entropy: float, candidate_blocks: int,
                max_block_top_k: int) -> list[torch.Tensor]:
    """logits float32 [B, V] (contiguous, CPU); per row fparams float64 [B, 4] = (1 / temperature,
    top_p, min_p, u) and iparams int64 [B, 3] = (1 greedy | 2 adaptive, top_k (0 = off), logprobs).
    Returns token_ids [B], their logprobs [B] and the top alternatives [B, N] (ids -1 and logprobs
    -inf past a row's own count), N = max logprobs. logits are read, not written."""
    module = _load()
    if module is None:
        raise RuntimeError(f"the compiled sampler is not available: {_error}")
    return module.sample_rows(logits, fparams, iparams, list(poly), min_entropy, candidate_blocks,
                              max_block_top_k)
