"""A GatewayServer on an event loop in a background thread: for tests, benchmarks and notebooks,
where the caller's own thread stays synchronous.

    running = ServerThread(GatewayConfig(port=0))
    running.call(running.server.load_backends())
    ... Client(f"127.0.0.1:{running.port}") ...
    running.close()
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from gateway.config import GatewayConfig
from gateway.server import GatewayServer

T = TypeVar("T")


class ServerThread:
    """Starts (binds) the server at construction; loading the backends is the caller's call."""

    def __init__(self, config: GatewayConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway-loop", daemon=True)
        self.thread.start()
        self.server: GatewayServer = self.call(self._make(config))
        self.port: int = self.call(self.server.start())
        self.address = f"{config.host}:{self.port}"

    @staticmethod
    async def _make(config: GatewayConfig) -> GatewayServer:
        return GatewayServer(config)  # grpc.aio objects must be created on their event loop

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 600) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self, grace: float = 1.0) -> None:
        self.call(self.server.stop(grace=grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
