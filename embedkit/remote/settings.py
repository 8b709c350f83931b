"""A client's settings as one frozen value, and the retry policy inside it.

Every constructor argument of TEIClient / AsyncTEIClient lands in a `ClientSettings`; `client.settings`
is that value, a twin (`from_client`) takes the same object, and changing a setting means replacing it
(`client.settings = dataclasses.replace(client.settings, max_concurrency=1)`), so what a client does can
always be read off, or compared, in one place. The API key is part of it but never of its repr.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import httpx

from embedkit.errors import InputError

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_TIMEOUT",
    "FALLBACK_BATCH_SIZE",
    "Api",
    "ClientSettings",
    "RetryPolicy",
    "api_key_from_env",
]

API_KEY_ENV = "EMBEDKIT_API_KEY"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
DEFAULT_MAX_CONCURRENCY = 4
# TEI's default --payload-limit is 2,000,000 bytes; staying under it avoids a 413 round trip
DEFAULT_MAX_REQUEST_BYTES = 1_500_000
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024
# TEI's default --max-client-batch-size, used when a server has no /info (OpenAI-style services)
FALLBACK_BATCH_SIZE = 32

Api = Literal["tei", "openai"]
EncodingFormat = Literal["float", "base64"]


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying a batch: exponential backoff with jitter, bounded in attempts and time.

    Waits are `backoff * 2**n` seconds plus up to `backoff` of jitter, capped at `max_backoff`; a server's
    Retry-After replaces the computed wait, up to `max_retry_after`. No retry starts that would end
    after `total_seconds`.
    """

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    total_seconds: float = 120.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise InputError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        for name in ("backoff", "max_backoff", "max_retry_after", "total_seconds"):
            if getattr(self, name) < 0:
                raise InputError(f"RetryPolicy.{name} must be >= 0, got {getattr(self, name)}")

    def wait(self, attempt: int, retry_after: float | None, jitter: float) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based); `jitter` is a draw from [0, 1)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1) + jitter * self.backoff)


def api_key_from_env() -> str | None:
    """The key in EMBEDKIT_API_KEY, None when unset or empty."""
    return os.environ.get(API_KEY_ENV) or None


def _check_count(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an int >= 1{' or None' if optional else ''}, got {value!r}")


@dataclass(frozen=True)
class ClientSettings:
    """Everything a TEIClient / AsyncTEIClient was told, checked once (InputError), never changed in place.

    `timeout` is stored as an httpx.Timeout (a number means that many seconds for every phase), `prompts` as
    a read-only mapping, `base_url` without its trailing slash. `api_key` is the key as resolved when the
    client was built (the argument, else EMBEDKIT_API_KEY); it is left out of the repr.
    """

    base_url: str
    api: Api = "tei"
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: httpx.Timeout = field(default_factory=lambda: DEFAULT_TIMEOUT)
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    batch_size: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    prompts: Mapping[str, str] | None = None
    max_input_tokens: int | None = None
    encoding_format: EncodingFormat = "base64"
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise InputError(f"base_url must be an http:// or https:// URL, got {self.base_url!r}")
        if self.api not in ("tei", "openai"):
            raise InputError(f"api must be 'tei' or 'openai', got {self.api!r}")
        if self.encoding_format not in ("float", "base64"):
            raise InputError(f"encoding_format must be 'float' or 'base64', got {self.encoding_format!r}")
        _check_count("max_concurrency", self.max_concurrency)
        _check_count("max_request_bytes", self.max_request_bytes)
        _check_count("batch_size", self.batch_size, optional=True)
        if not isinstance(self.retry, RetryPolicy):
            raise InputError(f"retry must be a RetryPolicy, got {type(self.retry).__name__}")
        # normalised forms, so two settings that mean the same compare equal
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if not isinstance(self.timeout, httpx.Timeout):
            object.__setattr__(self, "timeout", httpx.Timeout(self.timeout))
        if self.prompts is not None and not isinstance(self.prompts, MappingProxyType):
            object.__setattr__(self, "prompts", MappingProxyType(dict(self.prompts)))
