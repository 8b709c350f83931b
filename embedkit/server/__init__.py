"""`embedkit serve`: a TEI-compatible embedding server over the local runtime (extra `server`).

The package's modules, each one job: `settings` (ServerSettings and the defaults the CLI shares),
`guard` (API key and body limits, in the ASGI layer), `errors` (the one error-to-status table and
TEI's error bodies), `inputs` (request checks and the one tokenisation), `batching` (the dynamic
batcher and its token budget), `metrics` (Prometheus text), `schemas` (request and response bodies)
and `app` (the routes of an embedding model); `sparse_app` serves a SPLADE model and `rerank_app` a
reranker, sharing `common` (the app's guard, error table, health and metrics, admission, the routes of
the kinds of model not served). `ServerSettings` imports without FastAPI; `create_app` and `serve` need the extra.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from embedkit.errors import InputError, MissingDependencyError
from embedkit.server.settings import DEFAULT_HOST, DEFAULT_PORT, ServerSettings

if TYPE_CHECKING:
    from embedkit.server.app import create_app

__all__ = ["ServerSettings", "create_app", "serve"]

log = logging.getLogger(__name__)


def _app_module() -> Any:
    try:
        import uvicorn  # noqa: F401 - checked here so that a missing one names the extra too

        from embedkit.server import app
    except ImportError as exc:  # fastapi / uvicorn are optional
        raise MissingDependencyError(
            f"embedkit serve needs the server extra ({exc.name} is missing): pip install 'embedkit[server]'"
        ) from exc
    return app


def __getattr__(name: str) -> Any:
    # create_app is imported on first use, so that ServerSettings (and the CLI's parser) need no FastAPI
    if name == "create_app":
        return _app_module().create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def serve(
    model: str | os.PathLike[str] | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    settings: ServerSettings | None = None,
    device: str | None = None,
    dtype: str | None = None,
    backend: str | None = None,
    quantize: str | None = None,
) -> None:
    """Load `model` and serve it until interrupted; SIGINT/SIGTERM let in-flight requests finish.

    The served folder decides the routes: a sentence-transformers SparseEncoder folder (SPLADE) is served on
    TEI's /embed_sparse (`server/sparse_app.py`), a reranker folder (a cross-encoder) on TEI's /rerank and
    /v1/rerank (`server/rerank_app.py`), any other model on /embed. `device`, `dtype`, `backend` and
    `quantize` are `embedkit.load`'s (`embedkit.load_reranker`'s for a reranker). Raises
    MissingDependencyError without the `server` extra."""
    create_app = _app_module().create_app
    import uvicorn

    import embedkit

    settings = settings or ServerSettings()
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model", host)
    app = _sparse_app(model, settings, device, dtype, backend, quantize)
    if app is None:
        app = _rerank_app(model, settings, device, dtype, backend, quantize)
    if app is None:
        embedder = embedkit.load(model, device=device, dtype=dtype, backend=backend, quantize=quantize)
        log.info("serving %r", embedder)
        app = create_app(embedder, settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_keep_alive=5,
        limit_concurrency=settings.max_connections,  # slow clients cannot pile up without bound
        timeout_graceful_shutdown=30,
        h11_max_incomplete_event_size=64 * 1024,  # headers; bodies are capped by payload_limit
    )
    uvicorn.Server(config).run()


def _sparse_app(
    model: str | os.PathLike[str] | None,
    settings: ServerSettings,
    device: str | None,
    dtype: str | None,
    backend: str | None,
    quantize: str | None,
) -> Any:
    """The /embed_sparse app when `model` is a local SparseEncoder folder, else None."""
    from pathlib import Path

    if model is None or not Path(model).expanduser().is_dir():
        return None
    from embedkit.sparse.splade import is_sparse_model_dir, load_splade

    if not is_sparse_model_dir(Path(model).expanduser()):
        return None
    if quantize is not None:
        raise InputError("quantize is not available for SPLADE models; serve them in float32")
    from embedkit.server.sparse_app import create_sparse_app

    encoder = load_splade(model, device=device, dtype=dtype, backend=backend, max_length=settings.max_input_length)
    log.info("serving %r on /embed_sparse", encoder)
    return create_sparse_app(encoder, settings)


def _rerank_app(
    model: str | os.PathLike[str] | None,
    settings: ServerSettings,
    device: str | None,
    dtype: str | None,
    backend: str | None,
    quantize: str | None,
) -> Any:
    """The /rerank app when `model` (a folder, or a hub id found in or fetched into the cache) is a reranker,
    else None."""
    if model is None:
        return None
    from embedkit.hub import resolve_model_dir
    from embedkit.rerank.folders import reranker_reason

    model_dir, _ = resolve_model_dir(model)
    reason = reranker_reason(model_dir)
    if reason is None:
        return None
    from embedkit.rerank import load_reranker
    from embedkit.server.rerank_app import create_rerank_app

    reranker = load_reranker(
        model,
        device=device,
        dtype=dtype,
        backend=backend,
        quantize=quantize,
        batch_tokens=settings.max_batch_tokens,
        max_length=settings.max_input_length,
    )
    log.info("serving %r on /rerank (%s)", reranker, reason)
    return create_rerank_app(reranker, settings)
