"""A second KV level behind the in-process prefix cache: its interface and status
(configuration: backends/kv_tier_config.py; the Redis implementation: backends/redis_kv_tier.py).

Blocks are keyed by (model fingerprint, chain hash), so every replica and every restart of the
same model finds the same blocks. The tier is an optimisation only: whatever goes wrong in it,
a request is served by recomputing its prefix.

    tier.put(BlockWrite)          write-behind: queued, written later; False = dropped (full/down)
    tier.fetch(BlockFetch)        read-through: a Future of the longest verified chain of blocks
    tier.status()                 ok | degraded, with why and counters (health, metrics)
    tier.close()                  flush what is queued (bounded), stop the threads
"""

from __future__ import annotations

import abc
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from backends.kv_tier_config import KVTierConfig

TIER_OK = "ok"  # the last operations worked
TIER_DEGRADED = "degraded"  # unreachable (reconnecting with backoff), slow, or full: requests recompute


@dataclass(frozen=True)
class KVTierStatus:
    """A snapshot of the tier for health and metrics; counters are since start."""

    state: str  # TIER_OK | TIER_DEGRADED
    reason: str  # why degraded ("" when ok): "unreachable: ...", "full: ..."
    blocks_written: int  # blocks stored (SET acknowledged)
    blocks_dropped: int  # blocks not stored: queue full, tier unreachable or full
    blocks_fetched: int  # verified blocks handed to engines
    blobs_rejected: int  # blobs found but not used: bad checksum, other fingerprint, unknown version...
    fetches: int  # read-through lookups sent to Redis
    errors: int  # failed Redis calls (connection, timeout, out of memory)
    reconnects: int  # times the tier came back after being unreachable
    queued_blocks: int  # blocks waiting in the write-behind queue now


@dataclass(frozen=True)
class BlockWrite:
    """One full block to store: its identity and a private copy of its K/V in the stored dtype."""

    fingerprint: str  # the engine's fingerprint (prefix hashes are only valid under it)
    block_hash: bytes  # chain hash of the block
    kv: torch.Tensor  # [layers, K|V, block_size, kv_heads, head_dim], owned by the write


@dataclass(frozen=True)
class BlockFetch:
    """A chain of consecutive blocks to look for, in order; the result stops at the first gap."""

    fingerprint: str
    block_hashes: tuple[bytes, ...]  # consecutive chain hashes, the first one right after the local hits
    shape: tuple[int, ...]  # expected [layers, K|V, block_size, kv_heads, head_dim]
    dtype: torch.dtype  # the engine's KV dtype: blocks come back converted to it (off the engine thread)


class KVTier(abc.ABC):
    """A shared store of KV blocks. Implementations must never raise from put/fetch/status."""

    config: KVTierConfig

    @abc.abstractmethod
    def put(self, write: BlockWrite) -> bool:
        """Queue a block for writing; False if it was dropped (queue full, tier down)."""

    @abc.abstractmethod
    def fetch(self, request: BlockFetch) -> Future[list[torch.Tensor]]:
        """The K/V (in request.dtype) of the longest verified prefix of request.block_hashes."""

    @abc.abstractmethod
    def accepting(self) -> bool:
        """Whether put/fetch may do anything now (False while unreachable: skip the work)."""

    @abc.abstractmethod
    def status(self) -> KVTierStatus: ...

    @abc.abstractmethod
    def close(self, flush_timeout_s: float = 2.0) -> None:
        """Write what is queued (for at most flush_timeout_s), then stop."""


def open_kv_tier(config: KVTierConfig | None) -> KVTier | None:
    """The tier a config names, or None when it names none."""
    if config is None or not config.enabled:
        return None
    from backends.redis_kv_tier import RedisKVTier  # imports redis only when a tier is configured

    return RedisKVTier(config)
