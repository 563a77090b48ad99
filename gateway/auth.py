"""API keys: `authorization: Bearer <key>` metadata checked before any routegate handler runs.

Health checks and reflection stay open so load balancers and generic clients can probe a
gateway without a key. Keys are compared with hmac.compare_digest against every configured key
(no early exit), so the time taken does not tell how much of a key was right.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

import grpc

# Methods under these prefixes need no key.
EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
_BEARER = "bearer "


def bearer_key(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The key of an `authorization: Bearer <key>` entry, or None when there is none."""
    for name, value in metadata or ():
        if name.lower() == "authorization" and isinstance(value, str) and value[: len(_BEARER)].lower() == _BEARER:
            return value[len(_BEARER):].strip()
    return None


class KeyChecker:
    """Accepts exactly the configured keys, in constant time per key."""

    def __init__(self, api_keys: Sequence[str]) -> None:
        if not api_keys:
            raise ValueError("api_keys must hold at least one key")
        self._keys = tuple(k.encode() for k in api_keys)

    def accepts(self, key: str | None) -> bool:
        if key is None:
            return False
        candidate = key.encode()
        matched = False
        for known in self._keys:
            matched |= hmac.compare_digest(candidate, known)
        return matched


def _deny(code: grpc.StatusCode, details: str, streaming: bool) -> grpc.RpcMethodHandler:
    if streaming:
        async def deny_stream(request, context: grpc.aio.ServicerContext):
            await context.abort(code, details)
            yield  # pragma: no cover - makes this an async generator, as streaming handlers are

        return grpc.unary_stream_rpc_method_handler(deny_stream)

    async def deny_unary(request, context: grpc.aio.ServicerContext):
        await context.abort(code, details)

    return grpc.unary_unary_rpc_method_handler(deny_unary)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Ends a call to a non-exempt method with UNAUTHENTICATED unless it carries a known key."""

    def __init__(self, api_keys: Sequence[str]) -> None:
        self._checker = KeyChecker(api_keys)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method.startswith(EXEMPT_PREFIXES):
            return await continuation(handler_call_details)
        key = bearer_key(handler_call_details.invocation_metadata)
        if self._checker.accepts(key):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        details = "missing API key: send `authorization: Bearer <key>` metadata" if key is None else "invalid API key"
        # NOTE: the deny handler must match the method's cardinality or grpc cannot send the status.
        return _deny(grpc.StatusCode.UNAUTHENTICATED, details, streaming=handler.unary_stream is not None)
