"""The Redis KV tier with a real model and real redis-server processes (never the one on 6379):
write-behind, read-through after a restart, and the faults (down at start, killed mid-load,
slow, full, corrupt or foreign blobs), each with the request answered exactly as a cold run.

SmolLM2 in bfloat16 with blocks stored as bfloat16, so a block read back from Redis is
bit-identical to the one computed, and greedy outputs must match the cold run token for token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import torch

from backends.checkpoint import open_checkpoint
from backends.engine import Engine
from backends.engine_config import EngineConfig
from backends.kv_blob import blob_key, encode_block
from backends.kv_pool import KVPool
from backends.kv_tier import TIER_DEGRADED, TIER_OK, BlockFetch, BlockWrite, KVTier, open_kv_tier
from backends.kv_tier_config import KVTierConfig
from backends.loader import load_engine, resolve_model_path
from backends.outputs import FinishReason
from backends.prefix_hash import ROOT_HASH, block_hash
from backends.sampling_params import SamplingParams
from gateway.config import GatewayConfig, config_from_dict
from tests.redis_server import FaultProxy, RedisServer

POOL_BYTES = 16 << 20
PROMPT = ("A long system prompt, shared by every request: you are a careful assistant who answers "
          "questions about Roman history. Give dates, names and places; say when sources disagree; "
          "prefer primary sources such as Livy, Tacitus, Suetonius and Cassius Dio, and keep every "
          "answer short, in plain words that a student of history would use in an essay. Question: who "
          "founded the city of Rome, and when?")
PARAMS = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)


class Model:
    """One loaded SmolLM2 shared by every engine of this module; each test builds fresh engines
    (a fresh pool: a restarted process, as far as the KV cache knows)."""

    def __init__(self) -> None:
        config = EngineConfig(name="smollm2-135m", model="bundled:smollm2-135m", dtype="bfloat16")
        self.base = load_engine(config, POOL_BYTES)
        self.weights = open_checkpoint(resolve_model_path(config.model)).fingerprint
        self.prompt = self.base.tokenizer.encode(PROMPT)
        self.cold = self.base.generate(self.prompt, PARAMS)  # the reference; its blocks stay cached
        self.bs = self.base.block_size
        self.hashes = []
        for i in range((len(self.prompt) - 1) // self.bs):  # the blocks a prefix hit may cover
            parent = self.hashes[-1] if self.hashes else ROOT_HASH
            self.hashes.append(block_hash(parent, self.base.fingerprint, self.prompt[i * self.bs:(i + 1) * self.bs]))

    def engine(self, tier: KVTier | None) -> Engine:
        b = self.base
        layout = b.kv_cache.layout
        return Engine(b.config, b.model_config, b.runner.model, b.tokenizer, KVPool([layout], POOL_BYTES), layout,
                      self.weights, tier)

    def from_first_blocks(self, num_blocks: int, tiers: Callable[..., KVTier]) -> list[int]:
        """The greedy output when the first num_blocks blocks come from Redis and the rest is
        recomputed: the reference for a chain that stops early. (Against a cold run of the whole
        prompt it may differ in the last bits: torch's SDPA does not always round a chunk on a
        cached prefix as it rounds the same rows of the whole prompt.)"""
        with RedisServer() as server:
            self.seed(server, num_blocks)
            engine = self.engine(tiers(server.url))
            out = engine.generate(self.prompt, PARAMS)
            assert engine.stats().kv_tier_loaded_tokens == num_blocks * self.bs
            return out

    def seed(self, server: RedisServer, num_blocks: int | None = None) -> None:
        """Store the prompt's blocks (as the cold run computed them) straight into Redis."""
        blocks = self.base.pool.blocks.lookup(self.hashes)
        assert len(blocks) == len(self.hashes)  # still cached in the reference engine's pool
        client = server.client()
        for h, block in list(zip(self.hashes, blocks))[:num_blocks]:
            kv = self.base.kv_cache.data[block].to(torch.bfloat16)
            client.set(blob_key(self.base.fingerprint, h), encode_block(kv, self.base.fingerprint, h))


@pytest.fixture(scope="module")
def model() -> Model:
    return Model()


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(server.port)
    yield proxy
    proxy.close()


@pytest.fixture
def tiers() -> Iterator[Callable[..., KVTier]]:
    opened: list[KVTier] = []

    def open_tier(url: str, **fields: object) -> KVTier:
        tier = open_kv_tier(KVTierConfig(url, **fields))
        opened.append(tier)
        return tier

    yield open_tier
    for tier in opened:
        tier.close(0.5)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for something a background thread does (not a timing assertion: a generous bound)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_write_behind_then_a_fresh_pool_reads_through(model: Model, server: RedisServer, tiers) -> None:
    tier_a = tiers(server.url, ttl_seconds=600)
    engine_a = model.engine(tier_a)
    assert engine_a.generate(model.prompt, PARAMS) == model.cold
    # Every block that became full (prompt and output) was written behind, once.
    computed = len(model.prompt) + PARAMS.max_tokens - 1
    wait_for(lambda: tier_a.status().blocks_written == computed // model.bs)
    client = server.client()
    assert client.dbsize() == computed // model.bs
    key = blob_key(engine_a.fingerprint, model.hashes[0])
    assert 0 < client.ttl(key) <= 600

    # "Restart": a new pool and a new tier connection; two requests share one fetch.
    tier_b = tiers(server.url)
    engine_b = model.engine(tier_b)
    first = engine_b.add_request(model.prompt, PARAMS)
    second = engine_b.add_request(model.prompt, PARAMS)
    outputs: dict[str, list[int]] = {first: [], second: []}
    cached: dict[str, int] = {}
    while engine_b.has_unfinished_requests():
        for out in engine_b.step():
            outputs[out.request_id] += out.new_token_ids
            cached[out.request_id] = out.num_cached_prompt_tokens
    assert outputs == {first: model.cold, second: model.cold}
    hit = len(model.hashes) * model.bs
    assert cached == {first: hit, second: hit}
    stats = engine_b.stats()
    assert stats.kv_tier_loaded_tokens == hit
    status = stats.kv_tier
    assert (status.fetches, status.blocks_fetched, status.blobs_rejected) == (1, len(model.hashes), 0)
    assert status.state == TIER_OK


def test_redis_down_at_start_recomputes_then_reconnects(model: Model, tiers) -> None:
    server = RedisServer()  # its port, not yet listening
    tier = tiers(server.url)
    status = tier.status()
    assert status.state == TIER_DEGRADED and status.reason.startswith("unreachable: ")
    engine = model.engine(tier)
    assert engine.generate(model.prompt, PARAMS) == model.cold
    assert engine.stats().kv_tier_loaded_tokens == 0
    assert tier.status().blocks_written == 0
    with server:
        wait_for(lambda: tier.status().state == TIER_OK)
        assert tier.status().reconnects == 1
        kv = model.base.kv_cache.data[0].to(torch.bfloat16)
        assert tier.put(BlockWrite(engine.fingerprint, bytes(32), kv))
        wait_for(lambda: tier.status().blocks_written == 1)
        assert server.client().exists(blob_key(engine.fingerprint, bytes(32))) == 1


def test_redis_killed_mid_load(model: Model, server: RedisServer, proxy: FaultProxy, tiers) -> None:
    model.seed(server)
    tier = tiers(proxy.url)
    engine = model.engine(tier)
    # Cut the MGET reply inside its second blob, killing Redis at that moment.
    proxy.cut_after_bytes = proxy.reply_bytes + engine.pool.page_bytes + 1000
    proxy.on_cut = server.stop
    assert engine.generate(model.prompt, PARAMS) == model.cold
    stats = engine.stats()
    assert stats.kv_tier_loaded_tokens == 0 and stats.prefix_hit_tokens == 0
    assert stats.kv_tier.state == TIER_DEGRADED and stats.kv_tier.errors >= 1
    proxy.cut_after_bytes = None
    server.start()  # back, empty, on the same port
    wait_for(lambda: tier.status().state == TIER_OK)


def test_slow_redis_times_out_and_recomputes(model: Model, server: RedisServer, proxy: FaultProxy, tiers) -> None:
    model.seed(server)
    tier = tiers(proxy.url, timeout_s=0.2)
    engine = model.engine(tier)
    proxy.delay_s = 1.0  # every reply arrives after the socket timeout
    assert engine.generate(model.prompt, PARAMS) == model.cold
    stats = engine.stats()
    assert stats.kv_tier_loaded_tokens == 0
    assert stats.kv_tier.state == TIER_DEGRADED and "Timeout" in stats.kv_tier.reason
    proxy.delay_s = 0.0
    wait_for(lambda: tier.status().state == TIER_OK)


def test_full_redis_without_eviction_refuses_writes(model: Model, tiers) -> None:
    with RedisServer("--maxmemory", "2mb", "--maxmemory-policy", "noeviction") as server:
        tier = tiers(server.url)
        engine = model.engine(tier)
        assert engine.generate(model.prompt, PARAMS) == model.cold
        computed = (len(model.prompt) + PARAMS.max_tokens - 1) // model.bs
        wait_for(lambda: tier.status().blocks_written + tier.status().blocks_dropped == computed)
        status = tier.status()
        assert status.state == TIER_DEGRADED and status.reason.startswith("full: ")
        assert status.blocks_dropped >= 1 and server.client().dbsize() == status.blocks_written


def test_full_redis_with_lru_eviction_serves_what_is_left(model: Model, tiers) -> None:
    with RedisServer("--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru") as server:
        model.seed(server)  # more than 2 MB: Redis evicts some blocks to take the others
        client = server.client()
        assert client.info("stats")["evicted_keys"] >= 1
        present = [client.exists(blob_key(model.base.fingerprint, h)) for h in model.hashes]
        chain = (present + [0]).index(0)  # blocks usable from the start of the prompt
        tier = tiers(server.url)
        engine = model.engine(tier)
        assert engine.generate(model.prompt, PARAMS) == model.from_first_blocks(chain, tiers)
        assert engine.stats().kv_tier_loaded_tokens == chain * model.bs
        assert tier.status().state == TIER_OK  # eviction is Redis doing its job, not a fault


def test_a_corrupt_blob_stops_the_chain_and_is_counted(model: Model, server: RedisServer, tiers) -> None:
    model.seed(server)
    client = server.client()
    key = blob_key(model.base.fingerprint, model.hashes[2])
    offset = client.strlen(key) // 2
    client.setrange(key, offset, bytes([client.getrange(key, offset, offset)[0] ^ 0x01]))
    tier = tiers(server.url)
    engine = model.engine(tier)
    # exactly as if block 2 and later were missing
    assert engine.generate(model.prompt, PARAMS) == model.from_first_blocks(2, tiers)
    stats = engine.stats()
    assert stats.kv_tier_loaded_tokens == 2 * model.bs  # blocks 0 and 1; 2 and later recomputed
    assert stats.prefix_hit_tokens == 2 * model.bs
    assert stats.kv_tier.blobs_rejected == 1 and stats.kv_tier.blocks_fetched == 2


def test_foreign_or_future_blobs_are_never_used(model: Model, server: RedisServer, tiers) -> None:
    fingerprint = model.base.fingerprint
    kv = model.base.kv_cache.data[0].to(torch.bfloat16)
    shape = tuple(kv.shape)
    client = server.client()
    other = encode_block(kv, fingerprint.replace("bfloat16", "float32"), model.hashes[0])
    client.set(blob_key(fingerprint, model.hashes[0]), other)  # another model's block under our key
    future = bytearray(encode_block(kv, fingerprint, model.hashes[1]))
    future[4] += 1  # a format version this reader does not know
    client.set(blob_key(fingerprint, model.hashes[1]), bytes(future))
    tier = tiers(server.url)
    for h in model.hashes[:2]:
        assert tier.fetch(BlockFetch(fingerprint, (h,), shape, torch.bfloat16)).result() == []
    assert (tier.status().blobs_rejected, tier.status().blocks_fetched) == (2, 0)


def test_fetch_is_capped_by_max_fetch_bytes(model: Model, server: RedisServer, tiers) -> None:
    model.seed(server)
    fingerprint = model.base.fingerprint
    shape = tuple(model.base.kv_cache.data.shape[1:])
    per_block = len(server.client().get(blob_key(fingerprint, model.hashes[0])))
    tier = tiers(server.url, max_fetch_bytes=2 * per_block + per_block // 2)
    blocks = tier.fetch(BlockFetch(fingerprint, tuple(model.hashes), shape, torch.float32)).result()
    assert len(blocks) == 2 and blocks[0].dtype == torch.float32  # converted to the engine's KV dtype
    assert torch.equal(blocks[1], model.base.kv_cache.data[model.base.pool.blocks.lookup(model.hashes)[1]].float())


def test_a_full_write_queue_drops_instead_of_waiting(model: Model, proxy: FaultProxy, tiers) -> None:
    tier = tiers(proxy.url, queue_blocks=1, timeout_s=10.0)
    kv = model.base.kv_cache.data[0].to(torch.bfloat16)
    writes = [BlockWrite(model.base.fingerprint, bytes([i]) * 32, kv) for i in range(4)]
    proxy.hold()  # the writer gets stuck on its first SET
    assert tier.put(writes[0])
    wait_for(lambda: tier.status().queued_blocks == 0)  # taken by the writer
    assert [tier.put(w) for w in writes[1:]] == [True, False, False]
    assert tier.status().blocks_dropped == 2
    proxy.release()
    wait_for(lambda: tier.status().blocks_written == 2)


def test_running_requests_go_on_while_a_fetch_waits(model: Model, server: RedisServer, proxy: FaultProxy,
                                                    tiers) -> None:
    model.seed(server)
    tier = tiers(proxy.url, timeout_s=10.0)
    engine = model.engine(tier)
    short = model.prompt[:10]  # no full block: nothing to fetch, admitted at once
    running = engine.add_request(short, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    engine.step()  # its prefill
    proxy.hold()  # Redis stalls (within the socket timeout)
    waiting = engine.add_request(model.prompt, PARAMS)
    outputs: dict[str, list[int]] = {running: [], waiting: []}
    step = engine.step()  # the running request decodes while the fetch is held up
    assert [(o.request_id, len(o.new_token_ids)) for o in step] == [(running, 1)]
    assert engine.kv_tier.num_pending == 1
    outputs[running] += step[0].new_token_ids
    proxy.release()
    while engine.has_unfinished_requests():
        for out in engine.step():
            outputs[out.request_id] += out.new_token_ids
    assert outputs[waiting] == model.cold
    assert engine.stats().kv_tier_loaded_tokens == len(model.hashes) * model.bs


def test_abort_while_waiting_for_a_fetch(model: Model, server: RedisServer, proxy: FaultProxy, tiers) -> None:
    model.seed(server)
    tier = tiers(proxy.url, timeout_s=10.0)
    engine = model.engine(tier)
    proxy.hold()
    request_id = engine.add_request(model.prompt, PARAMS)
    # Waiting on Redis: counted as waiting, not yet in the scheduler's queue.
    assert engine.has_unfinished_requests() and engine.stats().num_waiting == 1 and not engine.scheduler.waiting
    engine.abort(request_id)
    outputs = engine.step()
    assert [(o.request_id, o.finish_reason) for o in outputs] == [(request_id, FinishReason.ABORTED)]
    assert not engine.has_unfinished_requests()
    assert engine.pool.blocks.num_used == 0


def test_config_keys() -> None:
    assert GatewayConfig().kv_tier == KVTierConfig() and not KVTierConfig().enabled
    config = config_from_dict({"redis_url": "redis://127.0.0.1:7000/1", "redis_ttl_seconds": 60,
                               "redis_kv_dtype": "float16", "redis_queue_blocks": 8,
                               "redis_max_fetch_bytes": 1 << 20, "redis_timeout_s": 0.25})
    assert config.kv_tier == KVTierConfig("redis://127.0.0.1:7000/1", 60, "float16", 8, 1 << 20, 0.25)
    assert config.kv_tier.stored_dtype == torch.float16
    bad = [
        ({"redis_url": "http://x"}, "redis_url must start with redis://"),
        ({"redis_ttl_seconds": 0}, "redis_ttl_seconds must be >= 1"),
        ({"redis_kv_dtype": "float32"}, "redis_kv_dtype must be one of ('bfloat16', 'float16')"),
        ({"redis_queue_blocks": 0}, "redis_queue_blocks must be >= 1"),
        ({"redis_max_fetch_bytes": -1}, "redis_max_fetch_bytes must be >= 0"),
        ({"redis_timeout_s": 0}, "redis_timeout_s must be > 0"),
        ({"redis_queue_blocks": "8"}, "redis_queue_blocks must be of type int"),
    ]
    for data, message in bad:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            config_from_dict(data)
