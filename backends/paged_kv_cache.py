"""One engine's view of the shared KV pages.

    data[page, layer, 0 = K | 1 = V, slot in block, kv_head, head_dim]

A page holds every layer's K and V for `block_size` tokens: one contiguous run of bytes that
can be copied to or from another tier (Redis) in one piece.
"""

from __future__ import annotations

import torch

from backends.kv_pool import KVLayout, KVPool


class PagedKVCache:
    def __init__(self, pool: KVPool, layout: KVLayout) -> None:
        self.layout = layout
        self.block_size = pool.block_size(layout)
        self.data = pool.view(layout)
        # Per-layer (K, V) views [pages, block_size, kv_heads, head_dim]; no copies.
        self.layers = [(self.data[:, i, 0], self.data[:, i, 1]) for i in range(layout.num_layers)]
