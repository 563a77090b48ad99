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

import os

import torch

from backends.compiled_extension import CompiledExtension

# -ffp-contract=off: a weight recomputed by a scalar loop must equal the vectorized one summed
# before (the kernel fuses multiply-adds only where it writes std::fma itself).
_EXTENSION = CompiledExtension("routegate_sampling_kernel",
                               [os.path.join(os.path.dirname(__file__), "sampling_kernel.cpp")],
                               extra_cflags=["-ffp-contract=off"])


def available() -> bool:
    """True when the compiled sampler is loaded (building it now if needed)."""
    return _EXTENSION.available()


def build_error() -> str | None:
    """Why the compiled sampler is not in use, or None when it is."""
    return _EXTENSION.build_error()


def sample_rows(logits: torch.Tensor, fparams: torch.Tensor, iparams: torch.Tensor,
                poly: tuple[float, ...], min_entropy: float, candidate_blocks: int,
                max_block_top_k: int) -> list[torch.Tensor]:
    """logits float32 [B, V] (contiguous, CPU); per row fparams float64 [B, 4] = (1 / temperature,
    top_p, min_p, u) and iparams int64 [B, 3] = (1 greedy | 2 adaptive, top_k (0 = off), logprobs).
    Returns token_ids [B], their logprobs [B] and the top alternatives [B, N] (ids -1 and logprobs
    -inf past a row's own count), N = max logprobs. logits are read, not written."""
    return _EXTENSION.module().sample_rows(logits, fparams, iparams, list(poly), min_entropy,
                                           candidate_blocks, max_block_top_k)
