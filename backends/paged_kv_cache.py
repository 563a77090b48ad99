"""The paged K/V tensors of one engine.

Layout: one page per block holding every layer's K and V for `block_size` tokens,

    data[block, layer, 0 = K | 1 = V, slot in block, kv_head, head_dim]

so a block is one contiguous run of bytes: it can be copied to or from another tier (Redis)
in one piece, and pages of engines with different models can later share one byte budget.
"""

from __future__ import annotations

import torch

from backends.model_config import ModelConfig


class PagedKVCache:
    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.data = torch.zeros(num_blocks, config.num_layers, 2, block_size, config.num_kv_heads,
                                config.head_dim, dtype=dtype)
        # Per-layer (K, V) views [num_blocks, block_size, kv_heads, head_dim]; no copies.
        self.layers = [(self.data[:, i, 0], self.data[:, i, 1]) for i in range(config.num_layers)]

    @staticmethod
    def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return config.num_layers * 2 * block_size * config.num_kv_heads * config.head_dim * elem
