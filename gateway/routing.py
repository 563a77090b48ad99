"""The router as the gateway uses it: loaded and checked against the backends, run off the
event loop, timed into the metrics.

The router (router.Router) embeds the text and runs a forest: tens of milliseconds of CPU work
that must not block the event loop, and a model that should not be entered by many threads at
once, hence one dedicated worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from gateway.errors import UnknownBackendError


class RouteDecisionLike(Protocol):
    backend: str  # the chosen backend
    probabilities: Mapping[str, float]  # per backend
    score: float  # compared with the threshold
    threshold: float  # the threshold applied
    latency_ms: float  # time the router took


class RouterLike(Protocol):
    backends: Sequence[str]  # cheapest first
    threshold: float
    costs: Mapping[str, float]

    def route(self, text: str, threshold: float | None = None) -> RouteDecisionLike: ...


class _RoutingMetrics(Protocol):
    def observe_routing(self, backend: str, latency_s: float) -> None: ...


def load_router(path: str, costs: Mapping[str, float], backends: Sequence[str]) -> RouterLike:
    """Load a router file, apply the configured costs, check that every backend it routes to is
    served here, and warm it up (the embedder loads now, not on the first request)."""
    from router import Router  # imports the embedder and numpy: only when a router is configured

    try:
        router = Router.load(path)
        overrides = {name: cost for name, cost in costs.items() if name in router.backends}
        if overrides:
            router = Router.load(path, costs=overrides)
    except (OSError, ValueError) as exc:
        raise ValueError(f"router {path!r} could not be loaded: {exc}") from exc
    missing = [b for b in router.backends if b not in backends]
    if missing:
        raise ValueError(
            f"router {path!r} routes to backend(s) {', '.join(missing)} that are not configured "
            f"(backends: {', '.join(backends)})"
        )
    router.warm_up()
    return router


class RoutingService:
    """Runs one router on its own worker thread and counts its decisions."""

    def __init__(self, router: RouterLike, metrics: _RoutingMetrics | None = None) -> None:
        self.router = router
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router")

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(self.router.backends)

    async def route(self, text: str, threshold: float | None = None) -> RouteDecisionLike:
        loop = asyncio.get_running_loop()
        decision = await loop.run_in_executor(self._executor, self.router.route, text, threshold)
        if decision.backend not in self.router.backends:  # a router bug, not the client's
            raise UnknownBackendError(f"the router chose unknown backend {decision.backend!r}")
        if self._metrics is not None:
            self._metrics.observe_routing(decision.backend, decision.latency_ms / 1000.0)
        return decision

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

