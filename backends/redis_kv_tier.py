"""The KV tier on Redis: write-behind through a bounded queue, read-through with one MGET.

    engine thread ── put(BlockWrite) ──▶ bounded queue ──▶ writer thread: encode, SET EX (pipelined)
    engine thread ── fetch(BlockFetch) ─▶ reader thread: MGET, verify each blob ──▶ Future

Neither thread ever raises into the engine. A failed call (connection refused, reset, socket
timeout, or an idle heartbeat PING that fails) marks Redis unreachable: puts and fetches are
skipped at once (counted as dropped or as a miss) while the writer thread PINGs again after a
backoff that doubles from MIN_BACKOFF_S to MAX_BACKOFF_S. A write refused for memory
(maxmemory with noeviction) marks the tier full until a write succeeds again; reads go on.
Either makes status() "degraded". Keys evicted under allkeys-lru are simply misses.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import redis
import torch
from redis.backoff import NoBackoff
from redis.retry import Retry

from backends.kv_blob import BlobError, blob_bytes, blob_key, decode_block, encode_block
from backends.kv_tier import (TIER_DEGRADED, TIER_OK, BlockFetch, BlockWrite, KVTier, KVTierConfig,
                              KVTierStatus)

logger = logging.getLogger(__name__)

MIN_BACKOFF_S = 0.25  # first wait before reconnecting
MAX_BACKOFF_S = 5.0  # the wait doubles up to this
WRITE_BATCH_BLOCKS = 16  # SETs per pipeline: one round trip for a prefill chunk's blocks
HEARTBEAT_S = 1.0  # an idle tier PINGs this often, so health notices a dead Redis without traffic
_IDLE_POLL_S = 0.1  # how often an idle writer looks at the clock (reconnects, close)
_FAILURES = (redis.RedisError, OSError)  # what a call to a sick Redis raises


class RedisKVTier(KVTier):
    def __init__(self, config: KVTierConfig) -> None:
        if not config.enabled:
            raise ValueError("redis_url must be set for a Redis KV tier")
        self.config = config
        # No retries inside redis-py: one failure marks the tier down and our backoff takes over,
        # so a dead Redis costs a request one timeout at most, never several.
        self._client = redis.Redis.from_url(
            config.url, socket_timeout=config.timeout_s, socket_connect_timeout=config.timeout_s,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._queue: queue.Queue[BlockWrite] = queue.Queue(maxsize=config.queue_blocks)
        self._lock = threading.Lock()  # guards the state and counters below
        self._down_until: float | None = None  # monotonic time of the next PING; None = reachable
        self._down_reason = ""
        self._backoff_s = MIN_BACKOFF_S
        self._full_reason = ""  # set while writes are refused for memory
        self._counts = dict.fromkeys(
            ("blocks_written", "blocks_dropped", "blocks_fetched", "blobs_rejected", "fetches", "errors",
             "reconnects"), 0)
        self._closing = threading.Event()
        self._last_contact = 0.0  # monotonic time of the writer's last successful call (heartbeat)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-tier-read")
        self._probe()  # a Redis that is down at start is reported (and skipped) from the start
        self._writer = threading.Thread(target=self._write_loop, name="kv-tier-write", daemon=True)
        self._writer.start()

    # -- KVTier ----------------------------------------------------------------------------

    def put(self, write: BlockWrite) -> bool:
        if self._closing.is_set() or not self.accepting():
            self._count("blocks_dropped")
            return False
        try:
            self._queue.put_nowait(write)
        except queue.Full:
            self._count("blocks_dropped")  # under pressure drop, never stall the engine
            return False
        return True

    def fetch(self, request: BlockFetch) -> Future[list[torch.Tensor]]:
        if not self._closing.is_set() and self.accepting() and request.block_hashes:
            try:
                return self._reader.submit(self._fetch, request)
            except RuntimeError:
                pass  # closed meanwhile
        done: Future[list[torch.Tensor]] = Future()
        done.set_result([])
        return done

    def accepting(self) -> bool:
        with self._lock:
            return self._down_until is None

    def status(self) -> KVTierStatus:
        with self._lock:
            reason = self._down_reason if self._down_until is not None else self._full_reason
            return KVTierStatus(state=TIER_DEGRADED if reason else TIER_OK, reason=reason,
                                queued_blocks=self._queue.qsize(), **self._counts)

    def close(self, flush_timeout_s: float = 2.0) -> None:
        self._closing.set()
        self._writer.join(flush_timeout_s)
        self._reader.shutdown(wait=False, cancel_futures=True)
        if not self._writer.is_alive():
            self._client.close()

    # -- reader thread ---------------------------------------------------------------------

    def _fetch(self, request: BlockFetch) -> list[torch.Tensor]:
        # A blob's size is known before fetching; max_fetch_bytes caps the blocks asked for.
        per_block = blob_bytes(request.fingerprint, request.shape, self.config.stored_dtype)
        hashes = request.block_hashes[:self.config.max_fetch_bytes // per_block]
        if not hashes or not self.accepting():
            return []
        self._count("fetches")
        try:
            values = self._client.mget([blob_key(request.fingerprint, h) for h in hashes])
        except _FAILURES as exc:
            self._mark_down(exc)
            return []
        blocks = []
        for block_hash, value in zip(hashes, values):
            if value is None:
                break  # a gap (never written, expired or evicted): the rest is recomputed
            try:
                blocks.append(decode_block(value, request.fingerprint, block_hash, request.shape).to(request.dtype))
            except BlobError as exc:
                self._count("blobs_rejected")
                logger.warning("KV tier: ignoring block %s: %s", block_hash.hex()[:16], exc)
                break
        self._count("blocks_fetched", len(blocks))
        return blocks

    # -- writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            closing = self._closing.is_set()
            batch = self._take_batch(timeout=0 if closing else self._poll_interval())
            if not batch:
                if closing:
                    return
                self._maybe_reconnect()
                if self.accepting() and time.monotonic() - self._last_contact >= HEARTBEAT_S:
                    self._probe()
                continue
            if not self.accepting():
                self._maybe_reconnect()
            if self.accepting():
                self._write(batch)
            else:
                self._count("blocks_dropped", len(batch))

    def _take_batch(self, timeout: float) -> list[BlockWrite]:
        try:
            batch = [self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()]
        except queue.Empty:
            return []
        while len(batch) < WRITE_BATCH_BLOCKS:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[BlockWrite]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for write in batch:
            blob = encode_block(write.kv, write.fingerprint, write.block_hash)
            pipe.set(blob_key(write.fingerprint, write.block_hash), blob, ex=self.config.ttl_seconds)
        try:
            results = pipe.execute(raise_on_error=False)
        except _FAILURES as exc:
            self._mark_down(exc)
            self._count("blocks_dropped", len(batch))
            return
        self._last_contact = time.monotonic()
        refused = [r for r in results if isinstance(r, Exception)]
        with self._lock:
            self._counts["blocks_written"] += len(batch) - len(refused)
            self._counts["blocks_dropped"] += len(refused)
            self._counts["errors"] += len(refused)
            # OOM under maxmemory/noeviction: Redis is up but full; reads still work.
            self._full_reason = f"full: {refused[0]}" if refused else ""
        if refused:
            logger.warning("KV tier: Redis refused %d of %d writes: %s", len(refused), len(batch), refused[0])

    def _poll_interval(self) -> float:
        with self._lock:
            if self._down_until is None:
                return _IDLE_POLL_S
            return min(_IDLE_POLL_S, max(0.001, self._down_until - time.monotonic()))

    def _maybe_reconnect(self) -> None:
        with self._lock:
            due = self._down_until is not None and time.monotonic() >= self._down_until
        if due:
            self._probe()

    def _probe(self) -> None:
        try:
            self._client.ping()
        except _FAILURES as exc:
            self._mark_down(exc)
            return
        self._last_contact = time.monotonic()
        with self._lock:
            if self._down_until is not None:
                self._counts["reconnects"] += 1
                logger.info("KV tier: Redis is reachable again")
            self._down_until = None
            self._down_reason = ""
            self._backoff_s = MIN_BACKOFF_S

    def _mark_down(self, exc: BaseException) -> None:
        with self._lock:
            if self._down_until is None:
                self._backoff_s = MIN_BACKOFF_S
                logger.warning("KV tier: Redis unreachable (%s); serving by recompute", exc)
            else:
                self._backoff_s = min(2 * self._backoff_s, MAX_BACKOFF_S)
            self._down_until = time.monotonic() + self._backoff_s
            self._down_reason = f"unreachable: {type(exc).__name__}: {exc}"
            self._counts["errors"] += 1

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n
