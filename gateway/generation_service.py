"""Text in, text out: what the servicer delegates to, free of protobuf.

Resolves the backend, tokenizes the prompt, streams the engine's tokens through the engine loop
as the engine's UTF-8-safe text deltas. The gRPC servicer and (later) the in-process SDK
path both call ``GenerationService.generate``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass

from backends.engine import Engine
from backends.outputs import FinishReason
from backends.sampling_params import SamplingParams
from gateway.engine_loop import EngineLoop
from gateway.errors import UnknownBackendError


@dataclass(frozen=True)
class Usage:
    num_prompt_tokens: int  # prompt tokens, special tokens included
    num_completion_tokens: int  # tokens generated
    num_cached_prompt_tokens: int  # prompt tokens served from the prefix cache


@dataclass(frozen=True)
class GenerationChunk:
    """One streamed piece of a completion."""

    text: str  # text delta; never ends inside a UTF-8 character
    token_ids: tuple[int, ...]  # tokens generated since the previous chunk
    backend: str  # the backend serving the request
    finish_reason: FinishReason | None  # set on the last chunk only
    usage: Usage | None  # set on the last chunk only


class GenerationService:
    """Generates text on named in-process engines run by one EngineLoop."""

    def __init__(self, engines: Mapping[str, Engine], engine_loop: EngineLoop, default_backend: str) -> None:
        if default_backend not in engines:
            raise ValueError(f"default_backend {default_backend!r} is not one of {', '.join(engines)}")
        self._engines = dict(engines)
        self._engine_loop = engine_loop
        self.default_backend = default_backend

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(self._engines)

    def resolve_backend(self, backend: str) -> str:
        """The backend that serves a request naming ``backend`` ("" = the default)."""
        name = backend or self.default_backend
        if name not in self._engines:
            raise UnknownBackendError(f"unknown backend {name!r}; known: {', '.join(self._engines)}")
        return name

    async def generate(
        self, prompt: str, sampling_params: SamplingParams, backend: str = "", request_id: str = ""
    ) -> AsyncIterator[GenerationChunk]:
        """Stream the completion of ``prompt``; the last chunk has finish_reason and usage."""
        name = self.resolve_backend(backend)
        engine = self._engines[name]
        # NOTE: tokenizing a long prompt takes milliseconds of pure Python; off the event loop.
        prompt_token_ids = await asyncio.to_thread(engine.tokenizer.encode, prompt)
        num_completion_tokens = 0
        outputs = self._engine_loop.generate(
            name, prompt_token_ids, sampling_params, request_id or uuid.uuid4().hex
        )
        async with aclosing(outputs):
            async for output in outputs:
                num_completion_tokens += len(output.new_token_ids)
                text = output.text  # the engine detokenized it and cut stop strings
                usage = None
                if output.finished:
                    usage = Usage(output.num_prompt_tokens, num_completion_tokens, output.num_cached_prompt_tokens)
                elif not output.new_token_ids:
                    continue  # a prefill chunk that produced no token yet
                yield GenerationChunk(text, output.new_token_ids, name, output.finish_reason, usage)
