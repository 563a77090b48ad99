"""The routegate Python SDK: Client (blocking) and AsyncClient (asyncio) over gRPC.

    from gateway.client import Client

    with Client("127.0.0.1:50051", api_key="key-1") as client:
        for chunk in client.generate("The capital of France is", max_tokens=16, temperature=0):
            print(chunk.text, end="")
        print(client.complete(messages=[{"role": "user", "content": "Hi!"}], backend="smollm2-135m").text)
        print(client.route("Prove that sqrt(2) is irrational."))

Failed calls raise the typed errors of gateway.sdk_types (InvalidArgumentError, NotFoundError,
UnavailableError, ...). UNAVAILABLE alone is retried, with exponential backoff and jitter: it
is what a starting or draining gateway answers, and nothing has been generated yet. A stream is
retried only before its first chunk arrived. ``timeout`` (seconds) bounds a whole call,
retries included; leaving a ``generate`` loop early cancels the call, which aborts the request
on the server and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import grpc

from gateway import sdk_types as t
from gateway.proto_gen.routegate.v1 import gateway_pb2, gateway_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
T = TypeVar("T")


class _Policy:
    """Metadata, deadlines and the retry schedule shared by both clients."""

    def __init__(self, api_key: str | None, timeout: float | None, max_retries: int, backoff_s: float,
                 max_backoff_s: float) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s

    def deadline(self, timeout: float | None) -> float | None:
        timeout = self.timeout if timeout is None else timeout
        return None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def remaining(deadline: float | None) -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise t.DeadlineExceededError("the call's timeout passed while retrying")
        return left

    def delay(self, attempt: int, error: grpc.RpcError, deadline: float | None) -> float | None:
        """Seconds to wait before retrying ``attempt`` (0-based), or None to give up."""
        if error.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self.max_retries:
            return None
        wait = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
        if deadline is not None and time.monotonic() + wait >= deadline:
            return None
        return wait


class Client:
    """A blocking client of one gateway. Thread-safe; close it (or use ``with``) when done."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, api_key: str | None = None, timeout: float | None = 120.0,
                 max_retries: int = 3, backoff_s: float = 0.1, max_backoff_s: float = 2.0,
                 options: list[tuple[str, Any]] | None = None) -> None:
        self._policy = _Policy(api_key, timeout, max_retries, backoff_s, max_backoff_s)
        self._channel = grpc.insecure_channel(address, options=options)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _unary(self, method: Callable[..., T], request: Any, timeout: float | None) -> T:
        deadline = self._policy.deadline(timeout)
        for attempt in range(self._policy.max_retries + 1):
            try:
                return method(request, timeout=self._policy.remaining(deadline), metadata=self._policy.metadata)
            except grpc.RpcError as error:
                wait = self._policy.delay(attempt, error, deadline)
                if wait is None:
                    raise t.error_from_rpc(error) from None
                time.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def generate(self, prompt: str = "", *, timeout: float | None = None, **kwargs: Any) -> Iterator[t.Chunk]:
        """Stream a completion. Keywords: messages, max_tokens, backend, router_threshold,
        request_id and every sampling field (temperature, top_k, top_p, min_p, seed, stop, ...)."""
        request = t.generate_request(prompt, **kwargs)
        deadline = self._policy.deadline(timeout)
        for attempt in range(self._policy.max_retries + 1):
            call = self._stub.Generate(request, timeout=self._policy.remaining(deadline), metadata=self._policy.metadata)
            received = False
            try:
                for message in call:
                    received = True
                    yield t.chunk_from_proto(message)
                return
            except grpc.RpcError as error:
                wait = None if received else self._policy.delay(attempt, error, deadline)
                if wait is None:
                    raise t.error_from_rpc(error) from None
            finally:
                call.cancel()  # a no-op once finished; aborts the request if the caller stopped early
            time.sleep(wait)

    def complete(self, prompt: str = "", *, timeout: float | None = None, **kwargs: Any) -> t.Completion:
        """The whole completion at once; the same keywords as ``generate``."""
        response = self._unary(self._stub.Complete, t.generate_request(prompt, **kwargs), timeout)
        return t.completion_from_proto(response)

    def route(self, prompt: str = "", *, messages: t.Messages | None = None, router_threshold: float | None = None,
              timeout: float | None = None) -> t.RouteDecision:
        request = t.route_request(prompt, messages=messages, router_threshold=router_threshold)
        return t.route_from_proto(self._unary(self._stub.Route, request, timeout))

    def tokenize(self, prompt: str = "", *, messages: t.Messages | None = None, backend: str = "",
                 timeout: float | None = None) -> t.Tokenization:
        request = t.tokenize_request(prompt, messages=messages, backend=backend)
        return t.tokenization_from_proto(self._unary(self._stub.Tokenize, request, timeout))

    def list_backends(self, *, timeout: float | None = None) -> t.BackendList:
        response = self._unary(self._stub.ListBackends, gateway_pb2.ListBackendsRequest(), timeout)
        return t.backends_from_proto(response)


class AsyncClient:
    """The asyncio twin of Client; create and use it on one event loop."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, api_key: str | None = None, timeout: float | None = 120.0,
                 max_retries: int = 3, backoff_s: float = 0.1, max_backoff_s: float = 2.0,
                 options: list[tuple[str, Any]] | None = None) -> None:
        self._policy = _Policy(api_key, timeout, max_retries, backoff_s, max_backoff_s)
        self._channel = grpc.aio.insecure_channel(address, options=options)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        deadline = self._policy.deadline(timeout)
        for attempt in range(self._policy.max_retries + 1):
            try:
                return await method(request, timeout=self._policy.remaining(deadline), metadata=self._policy.metadata)
            except grpc.RpcError as error:
                wait = self._policy.delay(attempt, error, deadline)
                if wait is None:
                    raise t.error_from_rpc(error) from None
                await asyncio.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def generate(self, prompt: str = "", *, timeout: float | None = None, **kwargs: Any) -> AsyncIterator[t.Chunk]:
        """Stream a completion; the keywords of Client.generate."""
        request = t.generate_request(prompt, **kwargs)
        deadline = self._policy.deadline(timeout)
        for attempt in range(self._policy.max_retries + 1):
            call = self._stub.Generate(request, timeout=self._policy.remaining(deadline), metadata=self._policy.metadata)
            received = False
            try:
                async for message in call:
                    received = True
                    yield t.chunk_from_proto(message)
                return
            except grpc.RpcError as error:
                wait = None if received else self._policy.delay(attempt, error, deadline)
                if wait is None:
                    raise t.error_from_rpc(error) from None
            finally:
                call.cancel()
            await asyncio.sleep(wait)

    async def complete(self, prompt: str = "", *, timeout: float | None = None, **kwargs: Any) -> t.Completion:
        response = await self._unary(self._stub.Complete, t.generate_request(prompt, **kwargs), timeout)
        return t.completion_from_proto(response)

    async def route(self, prompt: str = "", *, messages: t.Messages | None = None,
                    router_threshold: float | None = None, timeout: float | None = None) -> t.RouteDecision:
        request = t.route_request(prompt, messages=messages, router_threshold=router_threshold)
        return t.route_from_proto(await self._unary(self._stub.Route, request, timeout))

    async def tokenize(self, prompt: str = "", *, messages: t.Messages | None = None, backend: str = "",
                       timeout: float | None = None) -> t.Tokenization:
        request = t.tokenize_request(prompt, messages=messages, backend=backend)
        return t.tokenization_from_proto(await self._unary(self._stub.Tokenize, request, timeout))

    async def list_backends(self, *, timeout: float | None = None) -> t.BackendList:
        response = await self._unary(self._stub.ListBackends, gateway_pb2.ListBackendsRequest(), timeout)
        return t.backends_from_proto(response)
