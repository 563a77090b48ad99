"""Configuration of the KV tier (Redis) behind the prefix cache; no torch, so the gateway can
validate its config file before loading anything heavy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

STORED_KV_DTYPES = ("bfloat16", "float16")  # how K/V are stored in Redis


@dataclass(frozen=True)
class KVTierConfig:
    """Where the tier lives and how much it may cost; `url` empty = no tier."""

    url: str = ""  # redis://host:port/db; "" = off
    ttl_seconds: int = 86400  # each block expires this long after its last write
    kv_dtype: str = "bfloat16"  # stored K/V: bfloat16 | float16 (exact when the engine's KV dtype matches)
    queue_blocks: int = 64  # write-behind queue; when full, new blocks are dropped (and counted)
    max_fetch_bytes: int = 64 << 20  # blob bytes one request may fetch at most
    timeout_s: float = 0.5  # socket timeout of every Redis call; a slower Redis counts as down

    def __post_init__(self) -> None:
        if not isinstance(self.url, str):
            raise ValueError(f"redis_url must be a string, got {self.url!r}")
        if self.url and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url must start with redis://, rediss:// or unix://, got {self.url!r}")
        if self.ttl_seconds < 1:
            raise ValueError(f"redis_ttl_seconds must be >= 1, got {self.ttl_seconds}")
        if self.kv_dtype not in STORED_KV_DTYPES:
            raise ValueError(f"redis_kv_dtype must be one of {STORED_KV_DTYPES}, got {self.kv_dtype!r}")
        if self.queue_blocks < 1:
            raise ValueError(f"redis_queue_blocks must be >= 1, got {self.queue_blocks}")
        if self.max_fetch_bytes < 0:
            raise ValueError(f"redis_max_fetch_bytes must be >= 0, got {self.max_fetch_bytes}")
        if not self.timeout_s > 0:
            raise ValueError(f"redis_timeout_s must be > 0, got {self.timeout_s}")

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    @property
    def stored_dtype(self) -> torch.dtype:
        import torch  # not at module level: the gateway validates its config before importing torch

        return getattr(torch, self.kv_dtype)

    @property
    def max_fetch_wait_s(self) -> float:
        """How long a request waits for its fetch before it runs without it (a trickling Redis)."""
        return max(2.0, 4 * self.timeout_s)
