"""Text in, text out: what the servicer delegates to, free of protobuf.

Chooses the backend (the request's, else the router's, else the default), admits the request
into the bounded queue, renders and tokenizes the prompt, and streams the engine's UTF-8-safe
text deltas (the engine detokenizes and cuts stop strings) through the engine loop. LiteLLM
backends are streamed from their remote server instead. The gRPC servicer and the benchmarks
call ``GenerationService.generate``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass

from backends.engine import Engine
from backends.outputs import FinishReason
from backends.token_logprobs import TokenLogprobs
from gateway.engine_loop import EngineLoop
from gateway.errors import NotReadyError, PreconditionError, QueueFullError, UnknownBackendError
from gateway.litellm_backend import LiteLLMBackend
from gateway.metrics import GatewayMetrics
from gateway.request import ChatMessage, GenerationRequest, prompt_token_ids
from gateway.routing import RouteDecisionLike, RoutingService


@dataclass(frozen=True)
class Usage:
    num_prompt_tokens: int  # prompt tokens, special tokens included
    num_completion_tokens: int  # tokens generated
    num_cached_prompt_tokens: int  # prompt tokens served from the prefix cache


@dataclass(frozen=True)
class GenerationChunk:
    """One streamed piece of a completion."""

    text: str  # text delta; never ends inside a UTF-8 character
    token_ids: tuple[int, ...]  # tokens generated since the previous chunk (none from LiteLLM backends)
    backend: str  # the backend serving the request
    finish_reason: FinishReason | None  # set on the last chunk only
    usage: Usage | None  # set on the last chunk only
    logprobs: tuple[TokenLogprobs, ...] = ()  # one per token in token_ids when requested
    routing_score: float | None = None  # last chunk only, when the router chose the backend


class GenerationService:
    """Generates text on named in-process engines (one EngineLoop) and LiteLLM backends."""

    def __init__(
        self,
        engines: Mapping[str, Engine],
        engine_loop: EngineLoop,
        default_backend: str,
        *,
        remote: Mapping[str, LiteLLMBackend] | None = None,
        router: RoutingService | None = None,
        metrics: GatewayMetrics | None = None,
        max_pending_requests: int = 1024,
    ) -> None:
        self._engines = dict(engines)
        self._remote = dict(remote or {})
        if default_backend not in self.backends:
            raise ValueError(f"default_backend {default_backend!r} is not one of {', '.join(self.backends)}")
        self._engine_loop = engine_loop
        self.default_backend = default_backend
        self.router = router
        self._metrics = metrics
        self._max_pending = max_pending_requests
        self.num_pending = 0  # requests admitted and not finished (the bounded queue's fill)
        self.draining = False  # set on shutdown: new requests get UNAVAILABLE

    @property
    def backends(self) -> tuple[str, ...]:
        return (*self._engines, *self._remote)

    def resolve_backend(self, backend: str) -> str:
        """The backend that serves a request naming ``backend`` ("" = the default)."""
        name = backend or self.default_backend
        if name not in self._engines and name not in self._remote:
            raise UnknownBackendError(f"unknown backend {name!r}; known: {', '.join(self.backends)}")
        return name

    async def route(self, text: str, threshold: float | None = None) -> RouteDecisionLike:
        """The router's decision for ``text``."""
        if self.router is None:
            raise PreconditionError("this gateway has no router configured (config key `router`)")
        return await self.router.route(text, threshold)

    async def choose(self, request: GenerationRequest) -> tuple[str, RouteDecisionLike | None]:
        """The backend for a request, and the router's decision when the router made it."""
        if request.backend or self.router is None:
            return self.resolve_backend(request.backend), None
        decision = await self.router.route(request.routing_text, request.router_threshold)
        return self.resolve_backend(decision.backend), decision

    async def tokenize(self, prompt: str, messages: tuple[ChatMessage, ...], backend: str) -> tuple[list[int], str, int]:
        """(token ids, backend, its context length) of a prompt or a rendered chat."""
        name = self.resolve_backend(backend)
        if name in self._remote:
            raise PreconditionError(f"backend {name!r} is a LiteLLM backend: it has no local tokenizer")
        engine = self._engines[name]
        ids = await asyncio.to_thread(prompt_token_ids, engine.tokenizer, prompt, messages)
        return ids, name, engine.max_model_len

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the completion; the last chunk has finish_reason, usage and the routing score."""
        if self.draining:
            raise NotReadyError("the gateway is shutting down")
        if self.num_pending >= self._max_pending:
            raise QueueFullError(f"{self.num_pending} requests are in flight (max_pending_requests); retry later")
        self.num_pending += 1  # NOTE: the event loop is single-threaded, so no lock is needed
        try:
            started = time.perf_counter()
            name, decision = await self.choose(request)
            score = decision.score if decision is not None else None
            if name in self._remote:
                chunks = self._generate_remote(name, request, score)
            else:
                chunks = self._generate_local(name, request, score)
            async with aclosing(chunks):
                async for chunk in self._timed(chunks, name, started):
                    yield chunk
        finally:
            self.num_pending -= 1

    async def _generate_local(self, name: str, request: GenerationRequest,
                              score: float | None) -> AsyncIterator[GenerationChunk]:
        engine = self._engines[name]
        # NOTE: tokenizing (and rendering a chat) takes milliseconds of pure Python; off the loop.
        prompt_ids = await asyncio.to_thread(prompt_token_ids, engine.tokenizer, request.prompt, request.messages)
        if len(prompt_ids) >= engine.max_model_len:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room in backend {name!r}'s "
                             f"context of {engine.max_model_len} tokens")
        num_completion_tokens = 0
        outputs = self._engine_loop.generate(
            name, prompt_ids, request.sampling_params, request.request_id or uuid.uuid4().hex
        )
        async with aclosing(outputs):
            async for output in outputs:
                num_completion_tokens += len(output.new_token_ids)
                if output.finished:
                    usage = Usage(output.num_prompt_tokens, num_completion_tokens, output.num_cached_prompt_tokens)
                    yield GenerationChunk(output.text, output.new_token_ids, name, output.finish_reason, usage,
                                          output.logprobs, score)
                elif output.new_token_ids:  # else a prefill chunk that produced no token yet
                    yield GenerationChunk(output.text, output.new_token_ids, name, None, None, output.logprobs)

    async def _generate_remote(self, name: str, request: GenerationRequest,
                               score: float | None) -> AsyncIterator[GenerationChunk]:
        deltas = self._remote[name].generate(request.prompt, request.messages, request.sampling_params)
        async with aclosing(deltas):
            async for delta in deltas:
                if delta.finish_reason is None:
                    yield GenerationChunk(delta.text, (), name, None, None)
                else:
                    usage = Usage(delta.num_prompt_tokens, delta.num_completion_tokens, 0)
                    yield GenerationChunk(delta.text, (), name, delta.finish_reason, usage, (), score)

    async def _timed(self, chunks: AsyncIterator[GenerationChunk], name: str,
                     started: float) -> AsyncIterator[GenerationChunk]:
        """Pass chunks through, observing TTFT, inter-token and end-to-end latency."""
        metrics = self._metrics
        last = None
        async for chunk in chunks:
            if metrics is not None:
                now = time.perf_counter()
                if last is None:
                    metrics.time_to_first_token.labels(name).observe(now - started)
                else:
                    metrics.inter_token_latency.labels(name).observe(now - last)
                last = now
                if chunk.finish_reason is not None:
                    metrics.e2e_request_latency.labels(name).observe(now - started)
            yield chunk
