"""Conversions between routegate.v1 protobuf messages and the engine's dataclasses.

Proto3 scalars cannot tell "unset" from zero, so the fields whose zero is a meaningful value
(temperature, top_p, seed, max_tokens) are `optional` in the proto and take the dataclass
defaults when absent. Range checks stay in SamplingParams: its ValueErrors become
INVALID_ARGUMENT.
"""

from __future__ import annotations

from backends.sampling_params import SamplingParams
from gateway.generation_service import GenerationChunk
from gateway.proto_gen.routegate.v1 import gateway_pb2


def sampling_params_from_proto(request: gateway_pb2.GenerateRequest) -> SamplingParams:
    """The SamplingParams of a GenerateRequest (its `sampling` plus `max_tokens`)."""
    sampling = request.sampling
    defaults = SamplingParams()
    return SamplingParams(
        temperature=sampling.temperature if sampling.HasField("temperature") else defaults.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p if sampling.HasField("top_p") else defaults.top_p,
        seed=sampling.seed if sampling.HasField("seed") else None,
        max_tokens=request.max_tokens if request.HasField("max_tokens") else defaults.max_tokens,
        stop_token_ids=tuple(sampling.stop_token_ids),
        ignore_eos=sampling.ignore_eos,
    )


def chunk_to_proto(chunk: GenerationChunk, first: bool) -> gateway_pb2.GenerateResponse:
    """One GenerateResponse; the backend is named on the first, finish and usage on the last."""
    response = gateway_pb2.GenerateResponse(text=chunk.text, token_ids=chunk.token_ids)
    if first:
        response.backend = chunk.backend
    if chunk.finish_reason is not None:
        response.finish_reason = chunk.finish_reason.value
    if chunk.usage is not None:
        response.usage.prompt_tokens = chunk.usage.num_prompt_tokens
        response.usage.completion_tokens = chunk.usage.num_completion_tokens
        response.usage.cached_prompt_tokens = chunk.usage.num_cached_prompt_tokens
    return response
