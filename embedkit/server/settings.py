"""What `embedkit serve` runs with: the one place its defaults are written.

`ServerSettings()` and `embedkit serve --help` both read them from here (the CLI takes each flag's
default from `ServerSettings()`), so the two cannot disagree (tests/server/test_settings.py).
Imports neither FastAPI nor uvicorn: the CLI builds its parser without the `server` extra installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ServerSettings"]

DEFAULT_HOST = "127.0.0.1"  # this machine only; another interface is the user's explicit choice
DEFAULT_PORT = 8080  # TEI's


@dataclass(frozen=True)
class ServerSettings:
    """What `embedkit serve` was started with; the defaults are TEI's."""

    served_model_name: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_client_batch_size: int = 32  # inputs per request
    max_batch_tokens: int = 16384  # the dynamic batcher's budget: padded tokens per forward pass
    max_input_length: int | None = None  # tokens per input, None: the model's limit; inputs are cut (or refused) here
    auto_truncate: bool = True
    max_concurrent_requests: int = 512  # embedding requests in flight at once; more -> 429
    max_batch_requests: int | None = None  # requests packed into one forward call; 1 = no batching
    payload_limit: int = 2_000_000  # bytes
    body_timeout: float = 10.0  # seconds a client may take to send its whole body (slow-loris bodies)
    max_connections: int = 1024  # open connections and tasks; beyond it uvicorn answers 503
