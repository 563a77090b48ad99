"""The three reliability cases. Each returns a CaseResult: the one summary line `make
reliability` prints, and whether the case held."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

import grpc

from gateway.health_probe import check
from reliability.fuzz_requests import fuzz_case
from reliability.harness import Gateway, RedisServer
from reliability.traffic import Tally, one_request, random_request, run_clients

# Statuses a malformed or extreme request may end with; anything else (INTERNAL, UNKNOWN,
# UNAVAILABLE from a crashed server, a hang) is a failure.
CLEAN_STATUSES = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "RESOURCE_EXHAUSTED",
                  "FAILED_PRECONDITION", "OUT_OF_RANGE", "DEADLINE_EXCEEDED"}


@dataclass(frozen=True)
class CaseResult:
    name: str
    held: bool
    summary: str

    def line(self) -> str:
        return f"{self.name:<7} {'PASS' if self.held else 'FAIL'}  {self.summary}"


def soak(duration_s: float, num_clients: int = 64) -> CaseResult:
    """num_clients streaming clients on both backends for duration_s: nothing lost or hung, RSS
    growth under 5% after warm-up, the KV pool idle at the end."""
    with Gateway() as gateway:
        gateway.wait_serving()
        warmup_s = min(120.0, duration_s / 5)
        rss: dict[str, int] = {}
        timer = threading.Timer(warmup_s, lambda: rss.setdefault("warm", gateway.rss_bytes()))
        timer.start()
        tally = asyncio.run(run_clients(gateway.address, num_clients, duration_s, seed=1))
        timer.cancel()
        rss["end"] = gateway.rss_bytes()
        idle = gateway.wait_idle()
        healthy = gateway.healthy()
    growth = (rss["end"] - rss.get("warm", rss["end"])) / rss.get("warm", rss["end"])
    held = tally.lost == 0 and not tally.statuses and growth < 0.05 and idle and healthy
    return CaseResult("soak", held, (
        f"load held: {num_clients} clients x {duration_s:.0f} s, {tally.completed}/{tally.sent} completed, "
        f"p50 {tally.percentile(0.5):.2f} s, p99 {tally.percentile(0.99):.2f} s; RSS {growth:+.1%} after warm-up "
        f"(limit +5%); KV pool idle at end: {idle}; statuses {dict(tally.statuses) or 'none'}; "
        f"requests lost: {tally.lost}"))


def faults(duration_s: float = 60.0) -> CaseResult:
    """Redis killed and restarted under load, clients leaving mid-stream, a storm of expiring
    deadlines; every request answered, the pool idle and the gateway healthy afterwards."""
    notes, lost, survived = [], 0, 0
    redis = RedisServer().start()
    try:
        with Gateway(redis_url=redis.url) as gateway:
            gateway.wait_serving()
            # 1. Redis dies a third of the way in and comes back two thirds in.
            kill = threading.Timer(duration_s / 3, redis.stop)
            revive = threading.Timer(2 * duration_s / 3, redis.start)
            kill.start(), revive.start()
            tally = asyncio.run(run_clients(gateway.address, 16, duration_s, seed=2))
            kill.join(), revive.join()
            lost += tally.lost + sum(tally.statuses.values())
            tier_back = _wait(lambda: check(gateway.address, "routegate.kv_tier", 2) == "SERVING", 60)
            ok = tally.lost == 0 and not tally.statuses and tier_back
            survived += ok
            notes.append(f"redis kill+restart: {tally.completed}/{tally.sent} ok, tier back: {tier_back}")
            # 2. Clients that go away after the first chunk.
            cancelled = asyncio.run(_burst(gateway.address, 48, cancel_after_chunks=1))
            idle = gateway.wait_idle()
            ok = set(cancelled) <= {"cancelled", "ok"} and idle
            survived += ok
            lost += sum(1 for o in cancelled if o not in ("cancelled", "ok"))
            notes.append(f"48 disconnects: {dict(Counter(cancelled))}, pool idle {idle}")
            # 3. A storm of deadlines from 10 ms to 500 ms.
            storm = asyncio.run(_burst(gateway.address, 300, deadline_range=(0.01, 0.5)))
            idle, healthy = gateway.wait_idle(), gateway.healthy()
            ok = set(storm) <= {"ok", "DEADLINE_EXCEEDED"} and idle and healthy
            survived += ok
            lost += sum(1 for o in storm if o not in ("ok", "DEADLINE_EXCEEDED"))
            notes.append(f"300 deadlines: {dict(Counter(storm))}, pool idle {idle}, healthy {healthy}")
    finally:
        redis.stop()
    # 4. A backend raising inside a step: tests/test_fault_isolation.py runs it in process (it
    # needs an injected fault inside the engine, which a subprocess cannot take).
    return CaseResult("faults", survived == 3 and lost == 0,
                      f"faults survived: {survived}/3 ({'; '.join(notes)}); requests lost: {lost}")


async def _burst(address: str, count: int, cancel_after_chunks: int | None = None,
                 deadline_range: tuple[float, float] | None = None) -> list[str]:
    from gateway.client import AsyncClient

    rng = random.Random(3)
    tally = Tally()
    async with AsyncClient(address, timeout=None, max_retries=0) as client:
        async def one(i: int) -> str:
            request = random_request(rng) | {"max_tokens": 24}
            timeout = rng.uniform(*deadline_range) if deadline_range else None
            return await one_request(client, tally, request, 180.0, cancel_after_chunks, timeout)
        return await asyncio.gather(*(one(i) for i in range(count)))


def fuzz(num_requests: int = 10_000, concurrency: int = 32) -> CaseResult:
    """Generated malformed and extreme requests: each gets a clean status, and the gateway stays
    healthy."""
    with Gateway() as gateway:
        gateway.wait_serving()
        outcomes = asyncio.run(_fuzz(gateway.address, num_requests, concurrency))
        healthy = gateway.healthy()
        idle = gateway.wait_idle()
    unclean = {k: v for k, v in outcomes.items() if k not in CLEAN_STATUSES}
    return CaseResult("fuzz", not unclean and healthy and idle, (
        f"inputs tried: {sum(outcomes.values())}; statuses {dict(outcomes.most_common())}; "
        f"healthy after: {healthy}; pool idle: {idle}; requests lost: {sum(unclean.values())}"))


async def _fuzz(address: str, num_requests: int, concurrency: int) -> Counter:
    rng = random.Random(4)
    cases = [fuzz_case(rng) for _ in range(num_requests)]
    outcomes: Counter = Counter()
    identity = lambda b: b  # noqa: E731 - raw bytes both ways: the fuzzer writes its own requests
    options = [("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        async def worker(start: int) -> None:
            for method, data in cases[start::concurrency]:
                path = f"/routegate.v1.Gateway/{method}"
                try:
                    if method == "Generate":
                        call = channel.unary_stream(path, request_serializer=identity, response_deserializer=identity)
                        async for _ in call(data, timeout=30):
                            pass
                    else:
                        call = channel.unary_unary(path, request_serializer=identity, response_deserializer=identity)
                        await call(data, timeout=30)
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    outcomes[exc.code().name] += 1
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return outcomes


def _wait(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(1)
    return False
