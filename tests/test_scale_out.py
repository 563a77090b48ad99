"""Two replicas on this machine behind gRPC client-side round-robin, sharing one Redis: the
second request of a prompt lands on the other replica and reuses the prefix the first one
computed, with the same greedy tokens. (README: "Running more than one replica".)"""

from __future__ import annotations

import time

from gateway.client import Client
from reliability.harness import Gateway
from tests.redis_server import RedisServer

BACKEND = "smollm2-135m"
PROMPT = ("You are the archivist of a small town museum. Answer in one short sentence and only from "
          "the catalogue. Visitor: when was the lighthouse lens donated to the collection?")
ONE_BACKEND = f'router = ""\n[[backends]]\nname = "{BACKEND}"\nmodel = "bundled:{BACKEND}"\n'


def served(gateway: Gateway) -> float:
    return gateway.metrics().get("routegate:e2e_request_latency_seconds_count", 0.0)


def test_round_robin_replicas_share_prefixes_through_redis():
    with RedisServer() as redis_server:
        with Gateway(redis_server.url, 32 << 20, ONE_BACKEND) as a, Gateway(redis_server.url, 32 << 20, ONE_BACKEND) as b:
            a.wait_serving(), b.wait_serving()
            target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
            with Client(target, timeout=300, options=[("grpc.lb_policy_name", "round_robin")]) as client:
                for _ in range(4):  # connects both subchannels; ListBackends is not counted as served
                    client.list_backends()
                params = dict(backend=BACKEND, max_tokens=4, temperature=0.0, ignore_eos=True)
                first = client.complete(PROMPT, **params)
                assert first.usage.cached_prompt_tokens == 0
                wait_for_keys(redis_server, (first.usage.prompt_tokens - 1) // 16)
                second = client.complete(PROMPT, **params)
            assert (served(a), served(b)) == (1.0, 1.0)  # one request on each replica
            cached = second.usage.cached_prompt_tokens
            hits = {tier: a.metrics().get(f'routegate:prefix_cache_hits_total{{backend="{BACKEND}",tier="{tier}"}}', 0)
                    + b.metrics().get(f'routegate:prefix_cache_hits_total{{backend="{BACKEND}",tier="{tier}"}}', 0)
                    for tier in ("local", "redis")}
            assert hits == {"local": 0, "redis": cached}  # the second replica's hit came from Redis
            assert second.token_ids == first.token_ids
            assert second.usage.cached_prompt_tokens == (first.usage.prompt_tokens - 1) // 16 * 16


def wait_for_keys(redis_server: RedisServer, count: int) -> None:
    deadline = time.monotonic() + 60
    while redis_server.client().dbsize() < count and time.monotonic() < deadline:
        time.sleep(0.05)  # blocks are written behind, off the request's path
