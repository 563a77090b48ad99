"""Errors the gateway raises, and the one place they become gRPC status codes.

Servicer code raises plain Python exceptions; ``ErrorInterceptor`` maps them with
``status_for``. Anything not in the table is an INTERNAL error whose traceback is logged and
whose details are not sent to the client.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

logger = logging.getLogger(__name__)


class UnknownBackendError(LookupError):
    """The request names a backend the gateway does not have."""


class RequestIdInUseError(ValueError):
    """A request with the same request_id is still in flight."""


class NotReadyError(RuntimeError):
    """The gateway is loading its backends or shutting down."""


class QueueFullError(RuntimeError):
    """The bounded queue of requests in flight (``max_pending_requests``) is full."""


class PreconditionError(RuntimeError):
    """The request is well-formed but the gateway cannot serve it as configured (no router,
    no local tokenizer for a LiteLLM backend)."""


class EngineRequestError(RuntimeError):
    """A backend failed one request inside a step (the rest of its batch went on): INTERNAL."""


class MalformedRequestError(ValueError):
    """The request bytes are not a valid protobuf message of the method's type."""


class _Malformed:
    """What a request deserializer returns for bytes it cannot parse; the handler then raises."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # NOTE: an exception inside a deserializer becomes an opaque INTERNAL status in grpc; parsing
    # here and raising from the handler lets the table answer INVALID_ARGUMENT instead.
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's malformed bytes
            return _Malformed(f"{type(exc).__name__}: {exc}")

    return parse


def _check_parsed(request: Any) -> None:
    if isinstance(request, _Malformed):
        raise MalformedRequestError(f"malformed request message ({request.reason})")


_OWN_METHOD_PREFIX = "/routegate."

# Checked in order, so subclasses come before their bases.
_STATUS_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (UnknownBackendError, grpc.StatusCode.NOT_FOUND),
    (RequestIdInUseError, grpc.StatusCode.ALREADY_EXISTS),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE),
    (QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing details for an exception raised by a handler."""
    for exc_type, code in _STATUS_TABLE:
        if isinstance(exc, exc_type):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"


async def _abort_with(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    code, details = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        logger.exception("unhandled error in %s", method, exc_info=exc)
    await context.abort(code, details)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler so an escaping exception ends the call with a mapped status.

    ``context.abort`` (grpc.aio.AbortError) and cancellation pass through untouched: the first
    already carries a status, the second means the client is gone.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        # Health and reflection map their own errors; only routegate's handlers are wrapped.
        if handler is None or not method.startswith(_OWN_METHOD_PREFIX):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        # Client-streaming and bidirectional RPCs (reflection) are passed through as they are.
        return handler


def _wrap_unary(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            _check_parsed(request)
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status, INTERNAL ones logged
            await _abort_with(context, exc, method)

    return wrapped


def _wrap_stream(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            _check_parsed(request)
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status, INTERNAL ones logged
            await _abort_with(context, exc, method)

    return wrapped
