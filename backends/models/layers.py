"""Building blocks shared by every architecture: norms, rotary embedding, gated MLP.

Layers receive their linear projections ready-made (see `WeightSource`): the full-precision
engine hands in dense layers, the k-quant engine quantized ones, and the model never knows.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from backends import fused_ops


class WeightSource(Protocol):
    """What a model needs from a checkpoint, by GGUF tensor name (without `.weight`)."""

    def linear(self, name: str) -> nn.Module: ...  # forward(x [T, in]) -> [T, out]
    # One module computing several projections of the same input: [T, out_1 + out_2 + ...].
    def linears(self, names: list[str]) -> nn.Module: ...
    def embedding(self, name: str) -> nn.Module: ...  # forward(ids [T]) -> [T, hidden]
    def vector(self, name: str) -> torch.Tensor: ...  # a 1-D tensor such as a norm weight
    def has(self, name: str) -> bool: ...


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 whatever the activation dtype (as HF does).

    The weight is the plain multiplier: Gemma's (1 + w) convention is folded in at load time,
    the way llama.cpp's converter stores it in GGUF files.
    """

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.float().contiguous(), requires_grad=False)
        self.eps = eps
        self.fused = fused_ops.available()  # one compiled call instead of several torch ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return fused_ops.rms_norm(x, self.weight, self.eps)
        y = F.rms_norm(x.float(), self.weight.shape, self.weight, self.eps)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def add_(self, x: torch.Tensor, delta: torch.Tensor, delta_norm: "RMSNorm | None" = None) -> torch.Tensor:
        """The residual step: x += delta (or delta_norm(delta), Gemma's post-norms) in place,
        rounded to x's dtype; returns this norm of the new x (the next block's input)."""
        if self.fused and x.dim() == 2 and x.is_contiguous():
            return fused_ops.add_rms_norm_(x, delta, None if delta_norm is None else delta_norm.weight,
                                           self.weight, self.eps)
        x.add_(delta if delta_norm is None else delta_norm(delta))
        return self(x)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables, NeoX layout (rotate the two halves of each head).

    x * cos + rotate_half(x) * sin, with rotate_half(x) = cat(-x2, x1), is computed as
    x * cos + roll(x, half) * signed_sin where signed_sin = cat(-sin1, sin2): the same products
    and sums, in three ops instead of seven.
    """

    def __init__(self, head_dim: int, base: float, max_positions: int, scaling_factor: float = 1.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        inv_freq = inv_freq / scaling_factor
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        sin = emb.sin()
        sin[:, : head_dim // 2].neg_()
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.half = head_dim // 2

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, signed sin) [T, 1, head_dim] of `positions`: computed once per step, shared by
        every layer using this embedding (see AttentionMetadata.memo)."""
        return self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor,
                tables: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Rotate x [T, heads, head_dim] by the angles of `positions` [T]."""
        cos, sin = tables if tables is not None else self.tables(positions, x.dtype)
        return torch.addcmul(x * cos, x.roll(self.half, dims=-1), sin)


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU for Llama, GeGLU (tanh GELU) for Gemma.

    gate_up is one projection whose output is [gate | up] (WeightSource.linears), so each
    token's activations are multiplied by both matrices in one call."""

    def __init__(self, gate_up: nn.Module, down: nn.Module, intermediate_size: int,
                 act: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.gate_up, self.down, self.act = gate_up, down, act
        self.intermediate_size = intermediate_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up(x)
        hidden = self.act(gate_up[:, : self.intermediate_size])
        return self.down(hidden.mul_(gate_up[:, self.intermediate_size:]))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")
