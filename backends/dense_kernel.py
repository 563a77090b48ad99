"""The compiled CPU product of the full-precision engine for a few tokens (dense_kernel.cpp).

    from backends import dense_kernel
    if dense_kernel.available():
        y = dense_kernel.linear(x, weight, bias)   # x [T, K], W [N, K] bfloat16 or float32

Built on first use like the other kernels (compiled_extension.py); without a compiler, or with
ROUTEGATE_NO_KERNELS=1 or ROUTEGATE_NO_DENSE_KERNEL=1, DenseLinear keeps F.linear.
"""

from __future__ import annotations

import os

import torch

from backends.compiled_extension import CompiledExtension

_EXTENSION = CompiledExtension("routegate_dense_kernel", [os.path.join(os.path.dirname(__file__), "dense_kernel.cpp")])

# Weight bytes below which one thread does the whole product: waking the second costs more.
GRAIN_BYTES = 256 << 10


def available() -> bool:
    """True when the compiled kernel is loaded (building it now if needed)."""
    if os.environ.get("ROUTEGATE_NO_DENSE_KERNEL") == "1":
        return False
    return _EXTENSION.available()


def build_error() -> str | None:
    """Why the kernel is not in use, or None when it is."""
    if os.environ.get("ROUTEGATE_NO_DENSE_KERNEL") == "1":
        return "disabled by ROUTEGATE_NO_DENSE_KERNEL=1"
    return _EXTENSION.build_error()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           grain_bytes: int = GRAIN_BYTES) -> torch.Tensor:
    """x [T, K] W [N, K]^T (+ bias [N]) -> [T, N] in W's dtype (x must have it too), summed in
    float32 and rounded once: F.linear up to the order of the additions."""
    return _EXTENSION.module().linear(x, weight, bias, grain_bytes)
