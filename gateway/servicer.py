"""The routegate.v1.Gateway servicer: convert, delegate, convert back.

Errors are not handled here; they propagate to gateway.errors.ErrorInterceptor, which maps them
to status codes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from gateway.convert import chunk_to_proto, sampling_params_from_proto
from gateway.errors import NotReadyError
from gateway.generation_service import GenerationService
from gateway.proto_gen.routegate.v1 import gateway_pb2, gateway_pb2_grpc


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    """Serves Generate once ``service`` is set (after the backends have loaded)."""

    def __init__(self) -> None:
        self.service: GenerationService | None = None

    def _ready_service(self) -> GenerationService:
        if self.service is None:
            raise NotReadyError("the gateway is still loading its backends; retry shortly")
        return self.service

    async def Generate(
        self, request: gateway_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        service = self._ready_service()
        sampling_params = sampling_params_from_proto(request)
        chunks = service.generate(request.prompt, sampling_params, request.backend, request.request_id)
        async with aclosing(chunks):
            first = True
            async for chunk in chunks:
                yield chunk_to_proto(chunk, first)
                first = False
