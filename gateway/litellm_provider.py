"""routegate as a LiteLLM provider: ``litellm.completion(model="routegate/<backend>", ...)``.

    import litellm
    from gateway.litellm_provider import register

    register("127.0.0.1:50051", api_key=None)       # once per process
    litellm.completion(model="routegate/auto", messages=[{"role": "user", "content": "Hi"}])
    for part in litellm.completion(model="routegate/smollm2-135m", messages=..., stream=True):
        print(part.choices[0].delta.content or "", end="")

``routegate/auto`` lets the gateway's router choose (or its default backend); any other name
after the slash is a backend. ``api_base`` in a call overrides the registered address.
Sampling keywords that the routegate API has (temperature, top_p, top_k, seed, stop, penalties,
logit_bias, ...) are forwarded; others are ignored like LiteLLM's drop_params would.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import litellm
from litellm.llms.custom_llm import CustomLLM, CustomLLMError
from litellm.types.utils import GenericStreamingChunk

from gateway import sdk_types as t
from gateway.client import DEFAULT_ADDRESS, AsyncClient, Client

PROVIDER = "routegate"
AUTO = "auto"  # the model name that leaves the choice to the router
_HTTP_STATUS = {  # what LiteLLM's error mapping understands
    t.InvalidArgumentError: 400, t.UnauthenticatedError: 401, t.NotFoundError: 404,
    t.DeadlineExceededError: 408, t.ResourceExhaustedError: 429, t.UnavailableError: 503,
}
_RENAMED = {"max_completion_tokens": "max_tokens"}


def _address(api_base: str | None, default: str) -> str:
    if not api_base:
        return default
    for scheme in ("grpc://", "http://"):
        if api_base.startswith(scheme):
            return api_base[len(scheme):].rstrip("/")
    return api_base


def _text(content: Any) -> str:
    """A message's content as text (OpenAI-style lists of parts are joined)."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _request_kwargs(model: str, messages: list, optional_params: dict) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "messages": [{"role": m["role"], "content": _text(m.get("content"))} for m in messages],
        "backend": "" if model == AUTO else model,
    }
    for key, value in optional_params.items():
        key = _RENAMED.get(key, key)
        if value is not None and (key in t.SAMPLING_FIELDS or key in ("max_tokens", "router_threshold")):
            kwargs[key] = value
    return kwargs


def _timeout(timeout: Any) -> float | None:
    return float(timeout) if isinstance(timeout, (int, float)) else None


def _error(exc: t.RoutegateError) -> CustomLLMError:
    return CustomLLMError(_HTTP_STATUS.get(type(exc), 500), f"routegate {exc.code.name}: {exc.details}")


def _fill(model_response: Any, model: str, completion: t.Completion) -> Any:
    model_response.choices[0].message.content = completion.text
    model_response.choices[0].finish_reason = completion.finish_reason or "stop"
    model_response.model = f"{PROVIDER}/{completion.backend}"
    model_response.created = int(time.time())
    usage = completion.usage
    model_response.usage = litellm.Usage(
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
    )
    return model_response


def _chunk(chunk: t.Chunk) -> GenericStreamingChunk:
    usage = None
    if chunk.usage is not None:
        u = chunk.usage
        usage = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                 "total_tokens": u.prompt_tokens + u.completion_tokens}
    return GenericStreamingChunk(text=chunk.text, is_finished=bool(chunk.finish_reason),
                                 finish_reason=chunk.finish_reason, usage=usage, index=0, tool_use=None)


class RoutegateLLM(CustomLLM):
    """The handler LiteLLM calls for ``routegate/...`` models."""

    def __init__(self, address: str = DEFAULT_ADDRESS, api_key: str | None = None) -> None:
        super().__init__()
        self.address = address
        self.api_key = api_key
        self._clients: dict[str, Client] = {}

    def _client(self, api_base: str | None) -> Client:
        address = _address(api_base, self.address)
        if address not in self._clients:
            self._clients[address] = Client(address, api_key=self.api_key)
        return self._clients[address]

    def completion(self, model: str, messages: list, api_base: str, custom_prompt_dict: dict, model_response: Any,
                   print_verbose: Any, encoding: Any, api_key: Any, logging_obj: Any, optional_params: dict,
                   *args: Any, timeout: Any = None, **kwargs: Any) -> Any:
        try:
            completion = self._client(api_base).complete(
                timeout=_timeout(timeout), **_request_kwargs(model, messages, optional_params))
        except t.RoutegateError as exc:
            raise _error(exc) from exc
        return _fill(model_response, model, completion)

    def streaming(self, model: str, messages: list, api_base: str, custom_prompt_dict: dict, model_response: Any,
                  print_verbose: Any, encoding: Any, api_key: Any, logging_obj: Any, optional_params: dict,
                  *args: Any, timeout: Any = None, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        try:
            for chunk in self._client(api_base).generate(
                    timeout=_timeout(timeout), **_request_kwargs(model, messages, optional_params)):
                yield _chunk(chunk)
        except t.RoutegateError as exc:
            raise _error(exc) from exc

    async def acompletion(self, model: str, messages: list, api_base: str, custom_prompt_dict: dict,
                          model_response: Any, print_verbose: Any, encoding: Any, api_key: Any, logging_obj: Any,
                          optional_params: dict, *args: Any, timeout: Any = None, **kwargs: Any) -> Any:
        # NOTE: a grpc.aio channel belongs to one event loop, so each call opens its own.
        async with AsyncClient(_address(api_base, self.address), api_key=self.api_key) as client:
            try:
                completion = await client.complete(
                    timeout=_timeout(timeout), **_request_kwargs(model, messages, optional_params))
            except t.RoutegateError as exc:
                raise _error(exc) from exc
        return _fill(model_response, model, completion)

    async def astreaming(self, model: str, messages: list, api_base: str, custom_prompt_dict: dict,
                         model_response: Any, print_verbose: Any, encoding: Any, api_key: Any, logging_obj: Any,
                         optional_params: dict, *args: Any, timeout: Any = None,
                         **kwargs: Any) -> AsyncIterator[GenericStreamingChunk]:
        async with AsyncClient(_address(api_base, self.address), api_key=self.api_key) as client:
            try:
                async for chunk in client.generate(
                        timeout=_timeout(timeout), **_request_kwargs(model, messages, optional_params)):
                    yield _chunk(chunk)
            except t.RoutegateError as exc:
                raise _error(exc) from exc


def register(address: str = DEFAULT_ADDRESS, api_key: str | None = None) -> RoutegateLLM:
    """Make ``routegate/...`` models go to the gateway at ``address``; returns the handler."""
    handler = RoutegateLLM(address, api_key)
    others = [p for p in litellm.custom_provider_map if p.get("provider") != PROVIDER]
    litellm.custom_provider_map = [*others, {"provider": PROVIDER, "custom_handler": handler}]
    # NOTE: LiteLLM reads custom_provider_map into its provider list only in this call.
    litellm.utils.custom_llm_setup()
    return handler
