"""`embedkit serve`: a TEI-compatible embedding server over the local runtime (extra `server`)."""

from __future__ import annotations

import logging
import os

from embedkit.errors import MissingDependencyError

__all__ = ["ServerSettings", "create_app", "serve"]

log = logging.getLogger(__name__)

try:
    from embedkit.server.app import ServerSettings, create_app
except ImportError as exc:  # fastapi / uvicorn are optional
    raise MissingDependencyError(
        f"embedkit serve needs the server extra ({exc.name} is missing): pip install 'embedkit[server]'"
    ) from exc


def serve(
    model: str | os.PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    settings: ServerSettings | None = None,
    device: str | None = None,
    dtype: str | None = None,
    backend: str | None = None,
    quantize: str | None = None,
) -> None:
    """Load `model` and serve it until interrupted; SIGINT/SIGTERM let in-flight requests finish.

    `device`, `dtype`, `backend` and `quantize` are `embedkit.load`'s."""
    import uvicorn

    import embedkit

    settings = settings or ServerSettings()
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model", host)
    embedder = embedkit.load(model, device=device, dtype=dtype, backend=backend, quantize=quantize)
    log.info("serving %r", embedder)
    config = uvicorn.Config(
        create_app(embedder, settings),
        host=host,
        port=port,
        log_level="info",
        timeout_keep_alive=5,
        limit_concurrency=settings.max_connections,  # slow clients cannot pile up without bound
        timeout_graceful_shutdown=30,
        h11_max_incomplete_event_size=64 * 1024,  # headers; bodies are capped by payload_limit
    )
    uvicorn.Server(config).run()
