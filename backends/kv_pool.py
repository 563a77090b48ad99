"""One KV memory budget shared by every in-process engine.

The budget is cut into pages of `page_bytes`. A page is one KV block of whichever engine
allocates it; each engine reads a page as [layers, K|V, block_size, kv_heads, head_dim] of its
own dtype, so its block size is the number of its tokens that fit a page. The page size is
chosen so that this rounding wastes little for every engine (measured in `page_waste`).
The block ids of the one BlockPool are page indices, so pressure from one engine evicts the
other's idle cached blocks in LRU order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from backends.block_pool import BlockPool
from backends.model_config import ModelConfig

MIN_BLOCK_TOKENS = 16  # the model with the most bytes per token gets at least this many


@dataclass(frozen=True)
class KVLayout:
    """How one engine lays out its K/V: what determines its bytes per token."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @classmethod
    def of(cls, config: ModelConfig, dtype: torch.dtype) -> "KVLayout":
        return cls(config.num_layers, config.num_kv_heads, config.head_dim, dtype)

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def bytes_per_token(self) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * self.element_size


def choose_page_bytes(layouts: list[KVLayout]) -> int:
    """The page size (16..32 tokens of the largest layout) with the least rounding waste."""
    largest = max(layout.bytes_per_token for layout in layouts)

    def waste(page: int) -> float:
        return max((page % layout.bytes_per_token) / page for layout in layouts)

    candidates = [tokens * largest for tokens in range(MIN_BLOCK_TOKENS, 2 * MIN_BLOCK_TOKENS + 1)]
    return min(candidates, key=lambda page: (waste(page), page))


def default_kv_cache_bytes() -> int:
    """A quarter of the memory available now, at most 4 GiB (pages are touched only when used)."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        available = 8 << 30
    return int(min(4 << 30, available // 4))


class KVPool:
    def __init__(self, layouts: list[KVLayout], kv_cache_bytes: int) -> None:
        if not layouts:
            raise ValueError("a KV pool needs at least one engine layout")
        self.page_bytes = choose_page_bytes(layouts)
        num_pages = kv_cache_bytes // self.page_bytes
        if num_pages < 1:
            raise ValueError(f"kv_cache_bytes={kv_cache_bytes} is smaller than one KV page "
                             f"({self.page_bytes} bytes)")
        self.num_pages = num_pages
        self.blocks = BlockPool(num_pages)
        # torch.empty: the OS maps pages lazily, so an unused budget costs no resident memory.
        self.storage = torch.empty(num_pages * self.page_bytes, dtype=torch.uint8)

    @property
    def total_bytes(self) -> int:
        return self.num_pages * self.page_bytes

    def block_size(self, layout: KVLayout) -> int:
        """Tokens of this layout per page."""
        size = self.page_bytes // layout.bytes_per_token
        if size < 1:
            raise ValueError(f"a page of {self.page_bytes} bytes holds no token of {layout}")
        return size

    def page_waste(self, layout: KVLayout) -> float:
        """Share of each page this layout cannot use (rounding of tokens per page)."""
        return (self.page_bytes - self.block_size(layout) * layout.bytes_per_token) / self.page_bytes

    def view(self, layout: KVLayout) -> torch.Tensor:
        """The pages as [pages, layers, 2, block_size, kv_heads, head_dim] of layout.dtype."""
        elem = layout.element_size
        if self.page_bytes % elem:
            raise ValueError(f"page of {self.page_bytes} bytes is not a whole number of {layout.dtype}")
        bs, heads, dim = self.block_size(layout), layout.num_kv_heads, layout.head_dim
        flat = self.storage.view(layout.dtype)
        return flat.as_strided(
            (self.num_pages, layout.num_layers, 2, bs, heads, dim),
            (self.page_bytes // elem, 2 * bs * heads * dim, bs * heads * dim, heads * dim, dim, 1))
