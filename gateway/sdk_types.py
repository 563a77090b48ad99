"""What the Python SDK (gateway/client.py) hands back: plain dataclasses and typed errors.

    from gateway.client import Client
    from gateway.sdk_types import InvalidArgumentError, UnavailableError
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from gateway.proto_gen.routegate.v1 import gateway_pb2

# -- errors ----------------------------------------------------------------------------------


class RoutegateError(Exception):
    """A call ended with a non-OK status; ``code`` and ``details`` are the server's."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code


class InvalidArgumentError(RoutegateError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(RoutegateError, LookupError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(RoutegateError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhaustedError(RoutegateError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(RoutegateError):
    """The gateway is starting, draining or unreachable; the SDK retries these."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(RoutegateError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnauthenticatedError(RoutegateError):
    code = grpc.StatusCode.UNAUTHENTICATED


class FailedPreconditionError(RoutegateError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class CancelledError(RoutegateError):
    code = grpc.StatusCode.CANCELLED


class InternalError(RoutegateError):
    code = grpc.StatusCode.INTERNAL


_ERRORS = {cls.code: cls for cls in (
    InvalidArgumentError, NotFoundError, AlreadyExistsError, ResourceExhaustedError, UnavailableError,
    DeadlineExceededError, UnauthenticatedError, FailedPreconditionError, CancelledError, InternalError,
)}


def error_from_rpc(error: grpc.RpcError) -> RoutegateError:
    """The typed error for a failed call (RoutegateError itself for codes without a class)."""
    code = error.code()
    details = error.details() or code.name
    cls = _ERRORS.get(code)
    return cls(details) if cls is not None else RoutegateError(details, code)


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, logprob) alternatives, most likely first


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int


@dataclass(frozen=True)
class Chunk:
    """One streamed piece of a completion (see GenerateResponse in the .proto)."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...]
    backend: str  # first chunk only
    finish_reason: str  # last chunk only: "stop", "length" or "aborted"
    usage: Usage | None  # last chunk only
    routing_score: float | None  # last chunk only, when the router chose the backend


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...]
    backend: str
    finish_reason: str
    usage: Usage
    routing_score: float | None


@dataclass(frozen=True)
class RouteDecision:
    backend: str
    probabilities: Mapping[str, float]
    score: float
    threshold: float
    router_latency_ms: float


@dataclass(frozen=True)
class Tokenization:
    token_ids: tuple[int, ...]
    backend: str
    max_model_len: int


@dataclass(frozen=True)
class BackendInfo:
    name: str
    engine: str
    model: str
    quant_type: str
    context_length: int
    cost: float
    status: str


@dataclass(frozen=True)
class BackendList:
    backends: tuple[BackendInfo, ...]
    default_backend: str
    has_router: bool = field(default=False)


# -- proto conversions ---------------------------------------------------------------------

SAMPLING_FIELDS = frozenset(f.name for f in gateway_pb2.SamplingParams.DESCRIPTOR.fields)
Messages = Sequence[Mapping[str, str] | tuple[str, str]]


def _messages(messages: Messages | None) -> list[gateway_pb2.ChatMessage]:
    out = []
    for m in messages or ():
        role, content = (m["role"], m["content"]) if isinstance(m, Mapping) else m
        out.append(gateway_pb2.ChatMessage(role=role, content=content))
    return out


def generate_request(prompt: str = "", *, messages: Messages | None = None, max_tokens: int | None = None,
                     backend: str = "", router_threshold: float | None = None, request_id: str = "",
                     **sampling: Any) -> gateway_pb2.GenerateRequest:
    """A GenerateRequest; ``sampling`` takes the SamplingParams fields of the .proto by name."""
    unknown = sorted(set(sampling) - SAMPLING_FIELDS)
    if unknown:
        raise TypeError(f"unknown sampling parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(SAMPLING_FIELDS))}")
    request = gateway_pb2.GenerateRequest(
        prompt=prompt, messages=_messages(messages), backend=backend, request_id=request_id,
        sampling=gateway_pb2.SamplingParams(**{k: v for k, v in sampling.items() if v is not None}),
    )
    if max_tokens is not None:
        request.max_tokens = max_tokens
    if router_threshold is not None:
        request.router_threshold = router_threshold
    return request


def route_request(prompt: str = "", *, messages: Messages | None = None,
                  router_threshold: float | None = None) -> gateway_pb2.RouteRequest:
    request = gateway_pb2.RouteRequest(prompt=prompt, messages=_messages(messages))
    if router_threshold is not None:
        request.router_threshold = router_threshold
    return request


def tokenize_request(prompt: str = "", *, messages: Messages | None = None, backend: str = "") -> gateway_pb2.TokenizeRequest:
    return gateway_pb2.TokenizeRequest(prompt=prompt, messages=_messages(messages), backend=backend)


def _logprobs(items: Sequence[gateway_pb2.TokenLogprob]) -> tuple[TokenLogprob, ...]:
    return tuple(TokenLogprob(x.token_id, x.logprob, tuple((t.token_id, t.logprob) for t in x.top)) for x in items)


def _usage(message: gateway_pb2.GenerateResponse | gateway_pb2.CompleteResponse) -> Usage | None:
    if not message.HasField("usage"):
        return None
    u = message.usage
    return Usage(u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens)


def chunk_from_proto(message: gateway_pb2.GenerateResponse) -> Chunk:
    return Chunk(
        message.text, tuple(message.token_ids), _logprobs(message.logprobs), message.backend, message.finish_reason,
        _usage(message), message.routing_score if message.HasField("routing_score") else None,
    )


def completion_from_proto(message: gateway_pb2.CompleteResponse) -> Completion:
    return Completion(
        message.text, tuple(message.token_ids), _logprobs(message.logprobs), message.backend, message.finish_reason,
        _usage(message) or Usage(0, 0, 0), message.routing_score if message.HasField("routing_score") else None,
    )


def route_from_proto(message: gateway_pb2.RouteResponse) -> RouteDecision:
    return RouteDecision(message.backend, dict(message.probabilities), message.score, message.threshold,
                         message.router_latency_ms)


def tokenization_from_proto(message: gateway_pb2.TokenizeResponse) -> Tokenization:
    return Tokenization(tuple(message.token_ids), message.backend, message.max_model_len)


def backends_from_proto(message: gateway_pb2.ListBackendsResponse) -> BackendList:
    infos = tuple(BackendInfo(b.name, b.engine, b.model, b.quant_type, b.context_length, b.cost, b.status)
                  for b in message.backends)
    return BackendList(infos, message.default_backend, message.has_router)
