"""Conversions between routegate.v1 protobuf messages and the gateway's dataclasses.

Proto3 scalars cannot tell "unset" from zero, so the fields whose zero is a meaningful value
(temperature, top_p, seed, repetition_penalty, max_tokens, router_threshold) are `optional` in
the proto and take the dataclass defaults when absent. Range checks stay in the dataclasses:
their ValueErrors become INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from backends.sampling_params import SamplingParams
from backends.token_logprobs import TokenLogprobs
from gateway.generation_service import GenerationChunk
from gateway.proto_gen.routegate.v1 import gateway_pb2
from gateway.request import ChatMessage, GenerationRequest

_DEFAULTS = SamplingParams()


def sampling_params_from_proto(request: gateway_pb2.GenerateRequest) -> SamplingParams:
    """The SamplingParams of a GenerateRequest (its `sampling` plus `max_tokens`)."""
    s = request.sampling

    def optional(name: str) -> object:
        return getattr(s, name) if s.HasField(name) else getattr(_DEFAULTS, name)

    return SamplingParams(
        temperature=optional("temperature"),
        top_k=s.top_k,
        top_p=optional("top_p"),
        min_p=s.min_p,
        repetition_penalty=optional("repetition_penalty"),
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        seed=s.seed if s.HasField("seed") else None,
        max_tokens=request.max_tokens if request.HasField("max_tokens") else _DEFAULTS.max_tokens,
        min_tokens=s.min_tokens,
        stop=tuple(s.stop),
        stop_token_ids=tuple(s.stop_token_ids),
        ignore_eos=s.ignore_eos,
        logprobs=s.logprobs,
        logit_bias=dict(s.logit_bias),
        adaptive_temperature=s.adaptive_temperature,
    )


def messages_from_proto(messages: Iterable[gateway_pb2.ChatMessage]) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(m.role, m.content) for m in messages)


def request_from_proto(request: gateway_pb2.GenerateRequest) -> GenerationRequest:
    return GenerationRequest(
        prompt=request.prompt,
        messages=messages_from_proto(request.messages),
        sampling_params=sampling_params_from_proto(request),
        backend=request.backend,
        router_threshold=request.router_threshold if request.HasField("router_threshold") else None,
        request_id=request.request_id,
    )


def _logprobs_to_proto(token_ids: Sequence[int], logprobs: Sequence[TokenLogprobs]) -> list[gateway_pb2.TokenLogprob]:
    return [
        gateway_pb2.TokenLogprob(
            token_id=t, logprob=lp.logprob,
            top=[gateway_pb2.TopLogprob(token_id=i, logprob=v) for i, v in lp.top],
        )
        for t, lp in zip(token_ids, logprobs)
    ]


def _fill(response: gateway_pb2.GenerateResponse | gateway_pb2.CompleteResponse, chunk: GenerationChunk) -> None:
    if chunk.finish_reason is not None:
        response.finish_reason = chunk.finish_reason.value
    if chunk.usage is not None:
        response.usage.prompt_tokens = chunk.usage.num_prompt_tokens
        response.usage.completion_tokens = chunk.usage.num_completion_tokens
        response.usage.cached_prompt_tokens = chunk.usage.num_cached_prompt_tokens
    if chunk.routing_score is not None:
        response.routing_score = chunk.routing_score


def chunk_to_proto(chunk: GenerationChunk, first: bool) -> gateway_pb2.GenerateResponse:
    """One GenerateResponse; the backend is named on the first, finish and usage on the last."""
    response = gateway_pb2.GenerateResponse(
        text=chunk.text, token_ids=chunk.token_ids, logprobs=_logprobs_to_proto(chunk.token_ids, chunk.logprobs)
    )
    if first:
        response.backend = chunk.backend
    _fill(response, chunk)
    return response


def complete_to_proto(chunks: Sequence[GenerationChunk]) -> gateway_pb2.CompleteResponse:
    """The whole completion of a stream of chunks, in one message."""
    token_ids = [t for c in chunks for t in c.token_ids]
    logprobs = [lp for c in chunks for lp in c.logprobs]
    response = gateway_pb2.CompleteResponse(
        text="".join(c.text for c in chunks), token_ids=token_ids,
        logprobs=_logprobs_to_proto(token_ids, logprobs), backend=chunks[0].backend,
    )
    _fill(response, chunks[-1])
    return response


def route_to_proto(decision) -> gateway_pb2.RouteResponse:  # noqa: ANN001 - a router.RouteDecision
    return gateway_pb2.RouteResponse(
        backend=decision.backend, probabilities=dict(decision.probabilities), score=decision.score,
        threshold=decision.threshold, router_latency_ms=decision.latency_ms,
    )
