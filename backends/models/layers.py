"""Building blocks shared by every architecture: norms, rotary embedding, gated MLP.

Layers receive their linear projections ready-made (see `WeightSource`): the full-precision
engine hands in dense layers, the k-quant engine quantized ones, and the model never knows.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn


class WeightSource(Protocol):
    """What a model needs from a checkpoint, by GGUF tensor name (without `.weight`)."""

    def linear(self, name: str) -> nn.Module: ...  # forward(x [T, in]) -> [T, out]
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
        self.weight = nn.Parameter(weight.float(), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight).to(dtype)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables, NeoX layout (rotate the two halves of each head)."""

    def __init__(self, head_dim: int, base: float, max_positions: int, scaling_factor: float = 1.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        inv_freq = inv_freq / scaling_factor
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate x [T, heads, head_dim] by the angles of `positions` [T]."""
        cos = self.cos[positions].unsqueeze(1).to(x.dtype)
        sin = self.sin[positions].unsqueeze(1).to(x.dtype)
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU for Llama, GeGLU (tanh GELU) for Gemma."""

    def __init__(self, gate: nn.Module, up: nn.Module, down: nn.Module,
                 act: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.gate, self.up, self.down, self.act = gate, up, down, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")
