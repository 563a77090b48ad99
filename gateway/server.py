"""The grpc.aio server: Gateway service, grpc.health.v1, reflection; start, load, drain.

    routegate serve                       # the CLI entry; see gateway/cli.py
    asyncio.run(serve(GatewayConfig()))   # the same from Python

Start-up order: the port (and the metrics port) is bound first (health NOT_SERVING, requests
UNAVAILABLE), then the backends and the router load on a worker thread, then health turns
SERVING for "" and for each backend name. On SIGTERM/SIGINT new requests get UNAVAILABLE, health
turns NOT_SERVING, in-flight requests get ``grace_period_s`` to finish, and the engine thread is
stopped.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from functools import partial

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from backends.engine import Engine
from backends.engine_config import EngineConfig
from backends.kv_tier import TIER_OK, KVTier
from backends.loader import load_engines
from gateway.auth import AuthInterceptor
from gateway.config import GatewayConfig
from gateway.engine_loop import EngineLoop
from gateway.errors import ErrorInterceptor
from gateway.generation_service import GenerationService
from gateway.litellm_backend import LiteLLMBackend
from gateway.metrics import GatewayMetrics
from gateway.proto_gen.routegate.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.routing import RoutingService, load_router
from gateway.servicer import GatewayServicer

logger = logging.getLogger(__name__)

# Builds the engines of a list of backends, all sharing one KV pool of the given bytes.
EngineLoader = Callable[[list[EngineConfig], int | None], dict[str, Engine]]

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name  # routegate.v1.Gateway
# Health of the Redis KV tier, when one is configured: NOT_SERVING while it is degraded. The
# gateway ("") stays SERVING then, since every request is still answered (by recompute).
KV_TIER_SERVICE = "routegate.kv_tier"
KV_TIER_POLL_S = 0.5


class GatewayServer:
    """One gateway process: the gRPC server plus the engines it serves."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.port: int | None = None  # the bound port, known after start()
        self.engines: dict[str, Engine] = {}  # backend name -> engine, filled by load_backends()
        self.metrics = GatewayMetrics()  # its own registry: several servers may share a process
        self.metrics_port: int | None = None  # the bound metrics port, when metrics_port is set
        self.service: GenerationService | None = None  # set once the backends have loaded
        # Auth runs first, so an unauthenticated call never reaches a handler.
        interceptors = [AuthInterceptor(config.api_keys)] if config.api_keys else []
        self._server = grpc.aio.server(interceptors=[*interceptors, ErrorInterceptor()])
        self._servicer = GatewayServicer(self._list_backends)
        self._router: RoutingService | None = None
        self._health = health.aio.HealthServicer()
        self._engine_loop: EngineLoop | None = None
        self._kv_tier_watch: asyncio.Task[None] | None = None
        gateway_pb2_grpc.add_GatewayServicer_to_server(self._servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )

    async def start(self) -> int:
        """Bind and start serving (not yet ready); return the bound port."""
        address = f"{self.config.host}:{self.config.port}"
        port = self._server.add_insecure_port(address)
        if port == 0:
            raise RuntimeError(f"could not bind {address}")
        self.port = port
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.start_http(self.config.host, self.config.metrics_port)
            logger.info("metrics on http://%s:%d/metrics", self.config.host, self.metrics_port)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        logger.info("listening on %s:%d; loading %d backend(s)", self.config.host, port, len(self.config.backends))
        return port

    async def load_backends(self, loader: EngineLoader | None = None) -> None:
        """Load every backend's engine (one shared KV pool) and the router, start the engine
        thread, turn SERVING."""
        start = asyncio.get_running_loop().time()
        loader = loader or partial(load_engines, kv_tier=self.config.kv_tier)
        config = self.config
        local = [backend.engine for backend in config.backends if backend.is_local]
        remote = {b.name: LiteLLMBackend(b.engine) for b in config.backends if not b.is_local}
        if config.router:
            costs = {b.name: b.cost for b in config.backends if b.cost is not None}
            router = await asyncio.to_thread(load_router, config.router, costs, [b.name for b in config.backends])
            self._router = RoutingService(router, self.metrics)
        self.engines = await asyncio.to_thread(loader, local, config.kv_cache_bytes) if local else {}
        logger.info("loaded %s in %.1f s", ", ".join(self.engines), asyncio.get_running_loop().time() - start)
        self._engine_loop = EngineLoop(self.engines, self.metrics)
        self._engine_loop.start()
        self.service = GenerationService(
            self.engines, self._engine_loop, config.default_backend, remote=remote, router=self._router,
            metrics=self.metrics, max_pending_requests=config.max_pending_requests,
        )
        self._servicer.service = self.service
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self._kv_tiers():
            self._kv_tier_watch = asyncio.create_task(self._watch_kv_tier())
        logger.info("serving %s on port %d", ", ".join(self.engines), self.port)

    async def stop(self, grace: float | None = None) -> None:
        """Turn health NOT_SERVING, let in-flight calls finish for ``grace`` s, stop the engines."""
        grace = self.config.grace_period_s if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self.service is not None:
            self.service.draining = True
        await self._health.enter_graceful_shutdown()
        # New calls keep reaching the servicer, which refuses them with UNAVAILABLE (clients retry
        # that, on another replica), until the generations in flight have ended; only then does
        # gRPC stop, whose own refusal of new calls is CANCELLED, which clients do not retry.
        while self.service is not None and self.service.num_pending > 0 and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await self._server.stop(max(0.0, deadline - loop.time()))
        if self._engine_loop is not None:
            await asyncio.to_thread(self._engine_loop.stop)
        if self._kv_tier_watch is not None:
            self._kv_tier_watch.cancel()
        for tier in self._kv_tiers():
            await asyncio.to_thread(tier.close)  # writes what is still queued, for a bounded time
        if self._router is not None:
            self._router.close()
        self.metrics.stop_http()

    def _list_backends(self) -> gateway_pb2.ListBackendsResponse:
        ready = self.service is not None and not self.service.draining
        router_costs = self._router.router.costs if self._router is not None else {}
        backends = []
        for backend in self.config.backends:
            engine = self.engines.get(backend.name)
            settings = backend.engine
            backends.append(gateway_pb2.BackendInfo(
                name=backend.name, engine=settings.engine, model=settings.model,
                quant_type=getattr(settings, "quant_type", "") or getattr(settings, "dtype", ""),
                context_length=engine.max_model_len if engine is not None else settings.max_model_len,
                cost=backend.cost if backend.cost is not None else router_costs.get(backend.name, 1.0),
                status="serving" if ready else "not_serving",
            ))
        return gateway_pb2.ListBackendsResponse(
            backends=backends, default_backend=self.config.default_backend, has_router=bool(self.config.router)
        )

    def _kv_tiers(self) -> list[KVTier]:
        """The KV tiers the engines use (one, shared, when redis_url is set)."""
        tiers = (getattr(e, "kv_tier", None) for e in self.engines.values())
        return list({id(t.tier): t.tier for t in tiers if t is not None}.values())

    async def _watch_kv_tier(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        previous = None
        while True:
            degraded = any(tier.status().state != TIER_OK for tier in self._kv_tiers())
            if degraded != previous:
                await self._health.set(KV_TIER_SERVICE, serving[degraded])
                previous = degraded
            await asyncio.sleep(KV_TIER_POLL_S)

    async def _set_health(self, status: int) -> None:
        for name in ("", *(b.name for b in self.config.backends)):
            await self._health.set(name, status)


async def serve(config: GatewayConfig) -> None:
    """Run the gateway until SIGTERM or SIGINT, then drain and return."""
    server = GatewayServer(config)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    await server.start()
    loading = asyncio.create_task(server.load_backends())
    stopping = asyncio.create_task(stop_requested.wait())
    try:
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            loading.result()  # a backend that fails to load ends the process with its error
            await stopping
        logger.info("stopping: draining in-flight requests for up to %.0f s", config.grace_period_s)
    finally:
        loading.cancel()
        stopping.cancel()
        await server.stop()
        logger.info("stopped")
