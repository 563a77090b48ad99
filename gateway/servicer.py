"""The routegate.v1.Gateway servicer: convert, delegate, convert back.

Errors are not handled here; they propagate to gateway.errors.ErrorInterceptor, which maps them
to status codes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

import grpc

from gateway.convert import (
    chunk_to_proto,
    complete_to_proto,
    messages_from_proto,
    request_from_proto,
    route_to_proto,
)
from gateway.errors import NotReadyError
from gateway.generation_service import GenerationService
from gateway.proto_gen.routegate.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.request import check_prompt_or_messages, check_router_threshold, routing_text


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    """Serves the Gateway once ``service`` is set (after the backends have loaded).

    ``list_backends`` answers ListBackends at any time (it reads the configuration and the
    current status), so clients can see what is loading.
    """

    def __init__(self, list_backends: Callable[[], gateway_pb2.ListBackendsResponse]) -> None:
        self.service: GenerationService | None = None
        self._list_backends = list_backends

    def _ready_service(self) -> GenerationService:
        if self.service is None:
            raise NotReadyError("the gateway is still loading its backends; retry shortly")
        if self.service.draining:
            raise NotReadyError("the gateway is shutting down")
        return self.service

    async def Generate(
        self, request: gateway_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        service = self._ready_service()
        chunks = service.generate(request_from_proto(request))
        async with aclosing(chunks):
            first = True
            async for chunk in chunks:
                yield chunk_to_proto(chunk, first)
                first = False

    async def Complete(
        self, request: gateway_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CompleteResponse:
        service = self._ready_service()
        chunks = service.generate(request_from_proto(request))
        async with aclosing(chunks):
            collected = [chunk async for chunk in chunks]
        return complete_to_proto(collected)

    async def Route(self, request: gateway_pb2.RouteRequest, context: grpc.aio.ServicerContext) -> gateway_pb2.RouteResponse:
        service = self._ready_service()
        messages = messages_from_proto(request.messages)
        check_prompt_or_messages(request.prompt, messages)
        threshold = request.router_threshold if request.HasField("router_threshold") else None
        check_router_threshold(threshold)
        return route_to_proto(await service.route(routing_text(request.prompt, messages), threshold))

    async def Tokenize(
        self, request: gateway_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.TokenizeResponse:
        service = self._ready_service()
        messages = messages_from_proto(request.messages)
        check_prompt_or_messages(request.prompt, messages)
        ids, backend, max_model_len = await service.tokenize(request.prompt, messages, request.backend)
        return gateway_pb2.TokenizeResponse(token_ids=ids, backend=backend, max_model_len=max_model_len)

    async def ListBackends(
        self, request: gateway_pb2.ListBackendsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListBackendsResponse:
        return self._list_backends()
