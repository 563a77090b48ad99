"""Concurrent streaming clients through the SDK, and what became of every request they sent."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.client import AsyncClient
from gateway.sdk_types import RoutegateError

BACKENDS = ("gemma3-270m", "smollm2-135m")
WORDS = ("the river light stone engine paper quiet north seven garden window music number "
         "history planet reason market winter question answer").split()


@dataclass
class Tally:
    """Requests sent, how each ended, and latencies of the completed ones."""

    sent: int = 0
    completed: int = 0  # a last chunk with a finish_reason arrived
    statuses: Counter = field(default_factory=Counter)  # non-OK status codes by name
    hung: int = 0  # no answer within the per-request limit (client-side timeout)
    broken: int = 0  # a stream that ended without a finish_reason and without an error
    latencies_s: list[float] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Requests that got neither a completion nor a clean status."""
        return self.hung + self.broken + self.statuses.get("INTERNAL", 0) + self.statuses.get("UNKNOWN", 0)

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def random_request(rng: random.Random) -> dict:
    return dict(prompt=" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))),
                backend=rng.choice(BACKENDS), max_tokens=rng.randint(4, 32),
                temperature=rng.choice([0.0, 0.7, 1.0]), seed=rng.randint(0, 1 << 30))


async def one_request(client: AsyncClient, tally: Tally, request: dict, limit_s: float,
                      cancel_after_chunks: int | None = None, timeout_s: float | None = None) -> str:
    """Send one streaming request; return how it ended ("ok", "cancelled" or a status name)."""
    tally.sent += 1
    started = time.perf_counter()

    async def consume() -> str:
        chunks = 0
        async for chunk in client.generate(timeout=timeout_s, **request):
            chunks += 1
            if chunk.finish_reason:
                return "ok"
            if cancel_after_chunks is not None and chunks >= cancel_after_chunks:
                return "cancelled"  # leaving the loop cancels the call
        return "broken"

    try:
        outcome = await asyncio.wait_for(consume(), limit_s)
    except RoutegateError as exc:  # NOTE: before TimeoutError: DeadlineExceededError is one too
        tally.statuses[exc.code.name] += 1
        return exc.code.name
    except asyncio.TimeoutError:
        tally.hung += 1
        return "hung"
    if outcome == "ok":
        tally.completed += 1
        tally.latencies_s.append(time.perf_counter() - started)
    elif outcome == "broken":
        tally.broken += 1
    return outcome


async def run_clients(address: str, num_clients: int, duration_s: float, seed: int = 0,
                      limit_s: float = 180.0, make_request: Callable[[random.Random], dict] = random_request) -> Tally:
    """num_clients clients, each sending one request after another until duration_s is up."""
    tally = Tally()
    stop_at = time.monotonic() + duration_s

    async def client_loop(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        async with AsyncClient(address, timeout=None, max_retries=0) as client:
            while time.monotonic() < stop_at:
                await one_request(client, tally, make_request(rng), limit_s)

    await asyncio.gather(*(client_loop(i) for i in range(num_clients)))
    return tally
