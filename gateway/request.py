"""What a client asks the gateway for, free of protobuf: the request and its prompt rendering."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from backends.sampling_params import SamplingParams

MAX_REQUEST_ID_CHARS = 256  # request ids appear in logs and engine maps; keep them bounded
MAX_MESSAGES = 1024


class _ChatTokenizer(Protocol):
    def encode(self, text: str, add_special: bool = True) -> list[int]: ...
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str: ...


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system", "user", "assistant", ...
    content: str

    def __post_init__(self) -> None:
        if not isinstance(self.role, str) or not self.role:
            raise ValueError(f"messages: role must be a non-empty string, got {self.role!r}")
        if not isinstance(self.content, str):
            raise ValueError(f"messages: content must be a string, got {type(self.content).__name__}")


@dataclass(frozen=True)
class GenerationRequest:
    """One completion request: a prompt or a chat, how to sample, where to send it."""

    prompt: str = ""  # text to complete; or `messages`
    messages: tuple[ChatMessage, ...] = ()  # a chat, rendered with the backend's chat template
    sampling_params: SamplingParams = field(default_factory=SamplingParams)  # includes max_tokens
    backend: str = ""  # "" = the router chooses, or the default backend when there is no router
    router_threshold: float | None = None  # overrides the router's threshold for this request
    request_id: str = ""  # "" = the gateway assigns one

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        check_prompt_or_messages(self.prompt, self.messages)
        check_router_threshold(self.router_threshold)
        if len(self.request_id) > MAX_REQUEST_ID_CHARS:
            raise ValueError(f"request_id must be at most {MAX_REQUEST_ID_CHARS} characters, got {len(self.request_id)}")

    @property
    def routing_text(self) -> str:
        return routing_text(self.prompt, self.messages)


def check_prompt_or_messages(prompt: str, messages: tuple[ChatMessage, ...]) -> None:
    if prompt and messages:
        raise ValueError("set either prompt or messages, not both")
    if len(messages) > MAX_MESSAGES:
        raise ValueError(f"messages must hold at most {MAX_MESSAGES} entries, got {len(messages)}")


def check_router_threshold(threshold: float | None) -> None:
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"router_threshold must be a finite number, got {threshold!r}")


def routing_text(prompt: str, messages: tuple[ChatMessage, ...]) -> str:
    """What the router reads: the prompt, or the chat's message contents one per line."""
    return prompt if not messages else "\n".join(m.content for m in messages)


def prompt_token_ids(tokenizer: _ChatTokenizer, prompt: str, messages: tuple[ChatMessage, ...]) -> list[int]:
    """The prompt's token ids; a chat is rendered with the backend's chat template.

    The rendered chat already carries the template's special tokens (BOS included), so it is
    encoded without adding them again, as HF transformers does.
    """
    if not messages:
        return tokenizer.encode(prompt)
    text = tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages])
    return tokenizer.encode(text, add_special=False)
