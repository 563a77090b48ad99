"""One engine's use of the shared KV tier: read-through before admission, write-behind after steps.

    add_request ─▶ defer(seq): local prefix lookup stops early ─▶ tier.fetch(next hashes) ─▶ seq waits
    step()      ─▶ admit_ready(): fetched blocks go into free pool pages, registered in the prefix
                   cache (so the scheduler's own lookup hits them), then seq joins the scheduler
                ─▶ write_behind(): full blocks the scheduler cached this step are copied (stored
                   dtype) and handed to tier.put

A waiting request holds no pool blocks and never stalls the running ones; it waits for its fetch
at most `max_wait_s`, then runs without it. Only the engine thread calls these methods.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

import torch

from backends.kv_tier import BlockFetch, BlockWrite, KVTier, KVTierStatus
from backends.paged_kv_cache import PagedKVCache
from backends.scheduler import Scheduler
from backends.sequence import Sequence

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 0.005  # with nothing else to run, how long one step waits for a fetch to land


@dataclass(frozen=True)
class _Pending:
    seq: Sequence
    fetch: BlockFetch
    future: Future[list[torch.Tensor]]
    deadline: float  # monotonic; after it the request runs without the fetch


class EngineKVTier:
    def __init__(self, tier: KVTier, scheduler: Scheduler, kv_cache: PagedKVCache, fingerprint: str) -> None:
        self.tier = tier
        self.scheduler = scheduler
        self.kv_cache = kv_cache
        self.fingerprint = fingerprint
        self.stored_dtype = tier.config.stored_dtype
        self.max_wait_s = tier.config.max_fetch_wait_s
        self.loaded_tokens = 0  # prompt tokens whose K/V came from the tier into the pool
        self._pending: dict[str, _Pending] = {}  # request id -> its fetch, in arrival order
        self._cached: list[tuple[int, bytes]] = []  # (block id, hash) cached by the current step
        self._block_shape = tuple(kv_cache.data.shape[1:])  # [layers, K|V, block_size, heads, dim]
        scheduler.on_block_cached = lambda block, block_hash: self._cached.append((block, block_hash))

    def defer(self, seq: Sequence) -> bool:
        """Start fetching the blocks after seq's local prefix hit; True = seq now waits here."""
        if not self.scheduler.config.enable_prefix_caching or not self.tier.accepting():
            return False
        self.scheduler.check(seq)  # a request that can never run fails now, not after its fetch
        hashes = self.scheduler.prefix_hashes(seq)
        missing = hashes[len(self.scheduler.pool.lookup(hashes)):]
        if not missing:
            return False
        # Requests sharing a prefix that is being fetched wait for that fetch instead of a second one.
        shared = next((p for p in self._pending.values() if p.fetch.block_hashes[0] == missing[0]), None)
        if shared is not None:
            fetch, future = shared.fetch, shared.future
        else:
            fetch = BlockFetch(self.fingerprint, tuple(missing), self._block_shape, self.kv_cache.data.dtype)
            future = self.tier.fetch(fetch)
        self._pending[seq.request_id] = _Pending(seq, fetch, future, time.monotonic() + self.max_wait_s)
        return True

    def admit_ready(self) -> None:
        """Install finished fetches and hand their requests to the scheduler (before schedule())."""
        if not self._pending:
            return
        if not self.scheduler.has_unfinished():
            wait({p.future for p in self._pending.values()}, IDLE_WAIT_S, FIRST_COMPLETED)
        now = time.monotonic()
        installed: set[int] = set()  # futures already installed (several requests may share one)
        for request_id, pending in list(self._pending.items()):
            if pending.future.done():
                if id(pending.future) not in installed:
                    installed.add(id(pending.future))
                    self._install(pending)
            elif now < pending.deadline:
                continue
            del self._pending[request_id]
            self.scheduler.add(pending.seq)

    def abort(self, request_id: str) -> bool:
        """Abort a request still waiting for its fetch (through the scheduler, which reports it)."""
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return False
        self.scheduler.add(pending.seq)
        self.scheduler.abort(request_id)
        return True

    def has_pending(self) -> bool:
        return bool(self._pending)

    @property
    def num_pending(self) -> int:
        """Requests waiting for their fetch (not yet in the scheduler's queue)."""
        return len(self._pending)

    def write_behind(self) -> None:
        """Queue the K/V of the blocks cached by this step's update (after scheduler.update)."""
        if not self._cached:
            return
        cached, self._cached = self._cached, []
        # One gather for all blocks: a private copy, since the pages may be reused right after.
        kv = self.kv_cache.data[[block for block, _ in cached]].to(self.stored_dtype)
        for i, (_, block_hash) in enumerate(cached):
            self.tier.put(BlockWrite(self.fingerprint, block_hash, kv[i]))

    def status(self) -> KVTierStatus:
        return self.tier.status()

    def _install(self, pending: _Pending) -> None:
        """Copy fetched blocks into free pages and register their hashes (skipping known ones)."""
        if pending.future.cancelled():
            return
        if pending.future.exception() is not None:  # a bug in the tier; the request recomputes
            logger.error("KV tier fetch failed", exc_info=pending.future.exception())
            return
        blocks = pending.future.result()
        pool = self.scheduler.pool
        new = [(h, kv) for h, kv in zip(pending.fetch.block_hashes, blocks) if not pool.lookup([h])]
        # Hold the request's local hits so that allocating pages cannot evict them.
        local = pool.lookup(self.scheduler.prefix_hashes(pending.seq))
        pool.acquire(local)
        new = new[:pool.num_free]
        ids = pool.allocate(len(new))
        for block, (block_hash, kv) in zip(ids, new):
            self.kv_cache.data[block].copy_(kv)
            pool.cache(block, block_hash)
        # Tail first, as sequences free: the chain's start is evicted last.
        pool.free(ids[::-1])
        pool.free(local[::-1])
        self.loaded_tokens += len(new) * self.kv_cache.block_size
