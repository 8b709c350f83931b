"""What every app of `embedkit serve` shares: the dense one (`app`), the SPLADE one (`sparse_app`) and the
reranker one (`rerank_app`).

One FastAPI app with the guard (API key, body limits) and the error table in front (`new_app`), /health,
/ping and /metrics; the admission count that answers 429 past `max_concurrent_requests`; TEI's timing
headers; and the routes of the kinds of model a server does NOT run, answered as TEI answers them: 424
Backend "model is not a re-ranker model" for /rerank on an embedder, "Model is not an embedding model"
for /embed on a reranker (TEI's router/src/http/server.rs `rerank`, core/src/infer.rs `embed_pooled`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from embedkit.server.errors import ERROR_STATUS, OPENAI_ERROR_PATHS, ApiError, add_error_handlers
from embedkit.server.guard import Guard
from embedkit.server.metrics import Metrics
from embedkit.server.schemas import ErrorResponse, OpenAIErrorResponse
from embedkit.server.settings import ServerSettings

__all__ = [
    "EMBEDDING_ROUTES",
    "NOT_AN_EMBEDDER",
    "NOT_A_RERANKER",
    "RERANK_ROUTES",
    "Admission",
    "error_responses",
    "new_app",
    "refuse_routes",
    "timing_headers",
]

# TEI's words, as its ErrorResponse carries them ("Backend error: " is TextEmbeddingsError::Backend's prefix)
NOT_A_RERANKER = "Backend error: model is not a re-ranker model"
NOT_AN_EMBEDDER = "Backend error: Model is not an embedding model"
RERANK_ROUTES = ("/rerank", "/v1/rerank")
EMBEDDING_ROUTES = ("/embed", "/embed_sparse", "/v1/embeddings", "/embeddings")

Lifespan = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]


def new_app(title: str, version: str, settings: ServerSettings, metrics: Metrics, lifespan: Lifespan | None) -> FastAPI:
    """A FastAPI app behind the Guard, answering errors from the one table, with /health, /ping and /metrics."""
    app = FastAPI(title=title, version=version, lifespan=lifespan)
    app.add_middleware(Guard, settings=settings)
    add_error_handlers(app, lambda error_type: metrics.inc("te_request_failure", err=error_type.lower()))

    @app.get("/health")
    @app.get("/ping", include_in_schema=False)
    async def health() -> Response:
        """200 with an empty body while the model answers."""
        return Response(status_code=200)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        """Prometheus text: requests, failures, latency, and what the model's app adds."""
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def error_responses() -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a native route: TEI's error body for each status it may answer."""
    return {status: {"model": ErrorResponse} for status in sorted(set(ERROR_STATUS.values()) - {503})}


class Admission:
    """Requests admitted and not yet answered; past `limit` a request is refused with 429 Overloaded.

    TEI >= 1.9 takes one permit per input (PR #726), so 32 clients posting 32 texts each hold 1024 of the
    default 512 and get 429 while the model has room; embedkit counts requests, as the flag's name says.
    The event loop is single-threaded, so a plain counter is enough.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        if self.in_flight >= self.limit:
            raise ApiError("Overloaded", "Model is overloaded")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


def timing_headers(start: float, *, cpu: bool | None, characters: int, tokens: int | None) -> dict[str, str]:
    """TEI's x-compute-* headers; `cpu` or `tokens` None leaves x-compute-type or x-compute-tokens out (a model
    behind a contract that does not say its device or count its tokens)."""
    elapsed = str(int((time.perf_counter() - start) * 1000))
    headers = {"x-compute-time": elapsed, "x-total-time": elapsed, "x-compute-characters": str(characters)}
    if cpu is not None:
        headers["x-compute-type"] = "cpu" if cpu else "gpu"
    if tokens is not None:
        headers["x-compute-tokens"] = str(tokens)
    return headers


def refuse_routes(app: FastAPI, paths: tuple[str, ...], message: str) -> None:
    """POST `paths` answer 424 Backend `message`, whatever the body: the served model is not of that kind.

    TEI checks the model type before reading the request (its /rerank) or on the first input (its /embed),
    so any body gets this answer; the body is not parsed, so it costs nothing."""

    async def refused(request: Request) -> Response:
        raise ApiError("Backend", message, counted_as="model_type")  # TEI's label: no backend failed

    for path in paths:
        shape = OpenAIErrorResponse if path in OPENAI_ERROR_PATHS else ErrorResponse
        app.post(path, responses={424: {"model": shape}}, name=f"refused{path}")(refused)
