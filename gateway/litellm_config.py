"""Configuration of a `litellm` backend: a model served elsewhere, reached through LiteLLM.

    [[backends]]
    name = "hosted"
    engine = "litellm"
    model = "openai/gpt-4o-mini"          # any LiteLLM model string, e.g. "ollama/llama3"
    api_base = "http://127.0.0.1:11434"   # optional; LiteLLM's default for the provider otherwise
    api_key_env = "OPENAI_API_KEY"        # optional; the environment variable holding the key
    cost = 10.0

Kept apart from gateway/litellm_backend.py so reading a config never imports litellm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

LITELLM_ENGINE = "litellm"


@dataclass(frozen=True)
class LiteLLMConfig:
    name: str  # backend name clients use
    model: str  # a LiteLLM model string ("openai/...", "ollama/...", ...)
    engine: str = LITELLM_ENGINE  # always "litellm"; present so config tables read alike
    api_base: str = ""  # "" = LiteLLM's default endpoint for the provider
    api_key_env: str = ""  # environment variable holding the API key; "" = none / LiteLLM's own
    max_model_len: int = 0  # the remote context, if known (0 = unknown, not checked here)
    timeout_s: float = 120.0  # per request, to the remote server

    def __post_init__(self) -> None:
        if self.engine != LITELLM_ENGINE:
            raise ValueError(f"backend {self.name!r}: engine must be {LITELLM_ENGINE!r}, got {self.engine!r}")
        if not self.model:
            raise ValueError(f"backend {self.name!r}: model must not be empty")
        if self.max_model_len < 0:
            raise ValueError(f"backend {self.name!r}: max_model_len must be >= 0, got {self.max_model_len}")
        if not self.timeout_s > 0:
            raise ValueError(f"backend {self.name!r}: timeout_s must be > 0, got {self.timeout_s}")

    @property
    def api_key(self) -> str | None:
        """The key from ``api_key_env``, read when a request is sent (never stored in the config)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None
