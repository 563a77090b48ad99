"""Gateway processes sharing one Redis KV tier: a prefix computed by one replica is reused by
another and after a restart, with greedy output identical to the cold run; while Redis is down
the tier's health is NOT_SERVING, the gateway stays SERVING and requests are answered.

Real `routegate serve` processes on free ports, a private redis-server (never 6379).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.proto_gen.routegate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.redis_server import RedisServer

ROUTEGATE = Path(sys.executable).with_name("routegate")
BACKEND = "smollm2-135m"
BLOCK_SIZE = 16  # SmolLM2 in bfloat16 on a pool of its own: 16 tokens a page
PROMPT = ("You are the support assistant of a small bookshop. Answer politely, in two sentences at "
          "most, and never invent prices, opening hours or titles that are not in the catalogue. "
          "Customer: do you have a copy of the Odyssey?")
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def _config(redis_url: str) -> str:
    return f"""
host = "127.0.0.1"
port = 0
grace_period_s = 5
kv_cache_bytes = 33554432
redis_url = "{redis_url}"

[[backends]]
name = "{BACKEND}"
model = "bundled:{BACKEND}"
dtype = "bfloat16"
"""


@dataclass
class Gateway:
    process: subprocess.Popen[str]
    log: list[str]
    port: int | None = None

    @classmethod
    def start(cls, config: Path) -> Gateway:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        process = subprocess.Popen([str(ROUTEGATE), "serve", "--config", str(config)], stderr=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, text=True, env=env)
        gateway = cls(process, [])
        threading.Thread(target=gateway._pump, daemon=True).start()
        return gateway

    def _pump(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)
            match = re.search(r"listening on [\d.]+:(\d+)", line)
            if match and self.port is None:
                self.port = int(match.group(1))

    def wait_serving(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.port is None or self.health("") != SERVING:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("gateway did not become SERVING:\n" + "".join(self.log))
            time.sleep(0.2)

    def health(self, service: str) -> int:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                return health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5).status
            except grpc.RpcError:
                return -1

    def wait_health(self, service: str, status: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.health(service) != status:
            if time.monotonic() > deadline:
                raise AssertionError(f"{service!r} never reached {status}:\n" + "".join(self.log[-20:]))
            time.sleep(0.1)

    def generate(self, prompt: str) -> tuple[list[int], gateway_pb2.Usage]:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            request = gateway_pb2.GenerateRequest(
                prompt=prompt, max_tokens=4, backend=BACKEND,
                sampling=gateway_pb2.SamplingParams(temperature=0.0, ignore_eos=True))
            chunks = list(gateway_pb2_grpc.GatewayStub(channel).Generate(request, timeout=300))
        assert chunks[-1].finish_reason == "length"
        return [t for c in chunks for t in c.token_ids], chunks[-1].usage

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for gateway in started:
        gateway.stop()


def test_replicas_and_restarts_share_prefixes_through_redis(tmp_path: Path, gateways: list[Gateway]) -> None:
    with RedisServer() as redis_server:
        config = tmp_path / "routegate.toml"
        config.write_text(_config(redis_server.url))
        gateways += [Gateway.start(config), Gateway.start(config)]  # two replicas, loading together
        first, second = gateways
        for gateway in gateways:
            gateway.wait_serving()
            assert gateway.health("routegate.kv_tier") == SERVING

        cold, usage = first.generate(PROMPT)  # nothing in Redis yet: a cold run
        assert usage.cached_prompt_tokens == 0 and usage.completion_tokens == 4
        blocks_written = (usage.prompt_tokens + 4 - 1) // BLOCK_SIZE  # every full block, prompt and output
        client = redis_server.client()
        deadline = time.monotonic() + 60
        while client.dbsize() < blocks_written and time.monotonic() < deadline:
            time.sleep(0.05)  # written behind, off the request's path
        assert client.dbsize() == blocks_written
        reusable = (usage.prompt_tokens - 1) // BLOCK_SIZE * BLOCK_SIZE

        tokens, usage = second.generate(PROMPT)  # the other replica
        assert tokens == cold and usage.cached_prompt_tokens == reusable

        assert first.stop() == 0  # a restart: a new process with an empty pool
        gateways.append(Gateway.start(config))
        restarted = gateways[-1]
        restarted.wait_serving()
        tokens, usage = restarted.generate(PROMPT)
        assert tokens == cold and usage.cached_prompt_tokens == reusable

        redis_server.stop()  # Redis dies: the tier is degraded, the gateway still serves
        second.wait_health("routegate.kv_tier", NOT_SERVING)
        assert second.health("") == SERVING
        other = "Customer: is the shop open on Sunday mornings?"
        tokens_down, usage = second.generate(other)
        assert len(tokens_down) == 4 and usage.cached_prompt_tokens == 0

        redis_server.start()  # back (empty) on the same port: the tier reconnects
        second.wait_health("routegate.kv_tier", SERVING)
        tokens, usage = restarted.generate(other)
        assert tokens == tokens_down
