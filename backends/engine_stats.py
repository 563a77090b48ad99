"""A snapshot of one engine and the shared pool, for metrics and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

from backends.kv_tier import KVTierStatus


@dataclass(frozen=True)
class EngineStats:
    num_running: int  # sequences in the batch
    num_waiting: int  # sequences queued (new or preempted)
    num_preemptions: int  # since start
    pool_blocks_total: int  # pages in the shared pool
    pool_blocks_used: int  # pages held by any engine
    pool_blocks_free: int  # pages allocate() can hand out
    pool_blocks_cached: int  # of the free pages, those still holding a cached prefix
    blocks_held: int  # pages this engine's running sequences hold (shared ones once)
    slots_allocated: int  # token slots in those pages
    slots_filled: int  # of those, slots holding a computed token's K/V
    page_waste: float  # share of each page this engine's layout cannot use (rounding)
    prefix_query_tokens: int  # prompt tokens looked up in the prefix cache
    prefix_hit_tokens: int  # of those, tokens served from cached blocks
    kv_tier: KVTierStatus | None = None  # the shared Redis tier (state, counters); None = off
    kv_tier_loaded_tokens: int = 0  # prompt tokens whose K/V this engine loaded from the tier

    @property
    def kv_waste(self) -> float:
        """Share of this engine's held KV bytes not holding K/V: unfilled slots and rounding."""
        if not self.slots_allocated:
            return 0.0
        filled = self.slots_filled / self.slots_allocated
        return 1.0 - filled * (1.0 - self.page_waste)
