"""A backend served elsewhere: requests are forwarded with litellm.acompletion, streaming.

This lets a hosted model or an Ollama server be one of the routed backends. There is no local
tokenizer, so chunks carry text but no token ids, usage comes from the remote server when it
reports it, and sampling fields that OpenAI-style APIs do not have are rejected rather than
silently dropped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from backends.outputs import FinishReason
from backends.sampling_params import SamplingParams
from gateway.errors import NotReadyError, QueueFullError
from gateway.litellm_config import LiteLLMConfig
from gateway.request import ChatMessage

# SamplingParams fields an OpenAI-compatible chat API has no parameter for.
_UNSUPPORTED = ("top_k", "min_p", "repetition_penalty", "min_tokens", "stop_token_ids", "ignore_eos",
                "logprobs", "adaptive_temperature")


@dataclass(frozen=True)
class RemoteDelta:
    """One streamed piece of a remote completion."""

    text: str
    finish_reason: FinishReason | None  # set on the last delta only
    num_prompt_tokens: int = 0  # last delta only; 0 when the server reported no usage
    num_completion_tokens: int = 0


def litellm_arguments(config: LiteLLMConfig, params: SamplingParams) -> dict[str, Any]:
    """The keyword arguments of litellm.acompletion for these sampling parameters."""
    defaults = SamplingParams()
    unsupported = [f for f in _UNSUPPORTED if getattr(params, f) != getattr(defaults, f)]
    if unsupported:
        raise ValueError(f"backend {config.name!r} (litellm) does not support {', '.join(unsupported)}")
    kwargs: dict[str, Any] = {
        "model": config.model, "stream": True, "stream_options": {"include_usage": True},
        "timeout": config.timeout_s, "max_tokens": params.max_tokens,
        "temperature": params.temperature, "top_p": params.top_p,
    }
    if config.api_base:
        kwargs["api_base"] = config.api_base
    if config.api_key is not None:
        kwargs["api_key"] = config.api_key
    if params.seed is not None:
        kwargs["seed"] = params.seed
    if params.stop:
        kwargs["stop"] = list(params.stop)
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(params, name):
            kwargs[name] = getattr(params, name)
    if params.logit_bias:
        kwargs["logit_bias"] = {str(t): b for t, b in params.logit_bias}
    return kwargs


def _finish_reason(value: str | None) -> FinishReason | None:
    if value is None:
        return None
    return FinishReason.LENGTH if value == "length" else FinishReason.STOP


def _mapped(exc: Exception) -> Exception:
    """LiteLLM's exceptions as the gateway's, so the one error table gives the status."""
    import litellm

    if isinstance(exc, litellm.RateLimitError):
        return QueueFullError(f"remote backend is rate limited: {exc}")
    if isinstance(exc, (litellm.BadRequestError, litellm.UnprocessableEntityError)):
        return ValueError(f"remote backend rejected the request: {exc}")
    if isinstance(exc, (litellm.APIConnectionError, litellm.ServiceUnavailableError, litellm.Timeout,
                        litellm.InternalServerError)):
        return NotReadyError(f"remote backend unavailable: {exc}")
    return exc


class LiteLLMBackend:
    """Forwards requests to one LiteLLM model string."""

    def __init__(self, config: LiteLLMConfig) -> None:
        self.config = config
        self.name = config.name

    async def generate(self, prompt: str, messages: tuple[ChatMessage, ...],
                       params: SamplingParams) -> AsyncIterator[RemoteDelta]:
        """Stream the remote completion; the last delta has the finish reason and usage."""
        import litellm  # heavy (about a second); only gateways with a litellm backend pay it

        kwargs = litellm_arguments(self.config, params)
        chat = [{"role": m.role, "content": m.content} for m in messages] or [{"role": "user", "content": prompt}]
        try:
            stream = await litellm.acompletion(messages=chat, **kwargs)
        except Exception as exc:  # noqa: BLE001 - mapped to the gateway's errors
            raise _mapped(exc) from exc
        finish: FinishReason | None = None
        usage = None
        try:
            async for chunk in stream:
                usage = getattr(chunk, "usage", None) or usage
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                finish = finish or _finish_reason(choice.finish_reason)
                text = choice.delta.content or ""
                if text:
                    yield RemoteDelta(text, None)
        except Exception as exc:  # noqa: BLE001 - mapped to the gateway's errors
            raise _mapped(exc) from exc
        yield RemoteDelta(
            "", finish or FinishReason.STOP,
            getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0,
        )

