"""The routes of `embedkit serve`: TEI's HTTP API over embedkit's local runtime, wired together.

Routes, bodies, status codes and error shapes follow Text Embeddings Inference >= 1.9
(TEI's router/src/http/server.rs). `/info` adds `prompts`: the task and prompt names a request may
send as `prompt_name`, which for jina-embeddings-v3 also select its LoRA adapter.

What each part does lives beside this module: the API key and body limits in `guard` (before the body
is parsed), the one error-to-status table in `errors`, the input checks and the one tokenisation in
`inputs` (before anything reaches the model), the dynamic batcher in `batching`, the Prometheus series
in `metrics`, the defaults in `settings`. A request's inputs reach the batcher as token ids cut to
`max_input_length`, so its budget counts what runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from tokenizers import Encoding

from embedkit.embedder import postprocess
from embedkit.errors import InputError
from embedkit.local.embedder import LocalEmbedder
from embedkit.server.batching import DynamicBatcher, Overloaded
from embedkit.server.common import (
    NOT_A_RERANKER,
    RERANK_ROUTES,
    Admission,
    error_responses,
    new_app,
    refuse_routes,
    timing_headers,
)
from embedkit.server.errors import OPENAI_PATHS, ApiError
from embedkit.server.inputs import InputPolicy, Item
from embedkit.server.metrics import Metrics
from embedkit.server.schemas import (
    EmbeddingModel,
    EmbedRequest,
    Info,
    ModelType,
    OpenAIEmbedding,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIErrorResponse,
    OpenAIUsage,
    SimpleToken,
    TokenizeRequest,
)
from embedkit.server.settings import ServerSettings

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(embedder: LocalEmbedder, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving `embedder`; run it with uvicorn (see `embedkit.server.serve`).

    The embedder is not changed: the dynamic batcher packs within `settings.max_batch_tokens` by itself.
    Raises InputError when `settings.max_input_length` leaves no room for a token beyond the special ones.
    """
    settings = settings or ServerSettings()
    policy = InputPolicy(embedder, settings)
    served_name = settings.served_model_name or embedder.model_id
    metrics = Metrics()
    state: dict[str, DynamicBatcher] = {}
    admission = Admission(settings.max_concurrent_requests)

    def record_batch(texts: int, tokens: int, seconds: float) -> None:
        metrics.observe("te_batch_next_size", texts)
        metrics.observe("te_batch_next_tokens", tokens)
        metrics.inc("te_embed_count", texts)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = DynamicBatcher(
            embedder,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_requests=settings.max_batch_requests,
            on_batch=record_batch,
        )
        batcher.start()
        state["batcher"] = batcher
        metrics.queue_size = lambda: batcher.queued_texts
        yield
        await batcher.close()  # in-flight requests finish first

    app = new_app("embedkit serve", server_version(), settings, metrics, lifespan)

    # -- shared steps ------------------------------------------------------------------------------

    async def embed_raw(items: list[Item], task: str | None, truncate: bool, direction: str) -> tuple[np.ndarray, int]:
        """Raw vectors of `items` and the tokens that ran (prompt and special tokens included)."""
        with admission.admitted():
            # the request's one tokenisation; the batcher and the model take these ids as they are
            ids = await asyncio.to_thread(policy.token_ids, items, task, truncate, direction.lower())
            for row in ids:
                metrics.observe("te_request_input_length", len(row))
            try:
                vectors = await state["batcher"].embed(ids, task=task)
            except Overloaded as exc:
                raise ApiError("Overloaded", f"Model is overloaded: {exc}") from None
        return vectors, sum(len(row) for row in ids)

    def embed_headers(start: float, items: list[Item], tokens: int) -> dict[str, str]:
        # token-id inputs count ids as characters, as TEI does
        characters = sum(len(item) for item in items)
        return timing_headers(start, cpu=embedder.device.type == "cpu", characters=characters, tokens=tokens)

    def counted(route: str) -> Callable[[Callable[..., Awaitable[Response]]], Callable[..., Awaitable[Response]]]:
        def wrap(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
            @functools.wraps(handler)  # FastAPI reads the handler's signature through __wrapped__
            async def run(*args: Any, **kwargs: Any) -> Response:
                start = time.perf_counter()
                metrics.inc("te_request_count", route=route)
                try:
                    response = await handler(*args, **kwargs)
                except (ApiError, InputError, StarletteHTTPException):
                    raise  # answered from the table by the error handlers
                except Exception as exc:
                    # logged once here, with its trace; the response says no more than TEI's
                    log.exception("%s failed", route)
                    raise ApiError("Backend", "Backend error: inference failed") from exc
                metrics.inc("te_request_success", route=route)
                metrics.observe("te_request_duration", time.perf_counter() - start)
                return response

            return run

        return wrap

    # -- routes ------------------------------------------------------------------------------------

    errors = error_responses()

    @app.post("/embed", response_model=list[list[float]], responses=errors)
    @counted("embed")
    async def embed(request: EmbedRequest) -> Response:
        """Pooled embeddings, one per input (a text or a token-id list), in input order (TEI's /embed)."""
        start = time.perf_counter()
        items = policy.items(request.inputs)
        task = policy.task(request.prompt_name)
        policy.check_dimensions(request.dimensions)
        truncate = settings.auto_truncate if request.truncate is None else request.truncate
        raw, tokens = await embed_raw(items, task, truncate, request.truncation_direction)
        vectors = postprocess(raw, dimensions=request.dimensions, normalize=request.normalize)
        body = json.dumps(vectors.tolist()).encode()
        return Response(body, media_type="application/json", headers=embed_headers(start, items, tokens))

    openai_errors: dict[int | str, dict[str, Any]] = {status: {"model": OpenAIErrorResponse} for status in errors}

    async def openai_embeddings(request: OpenAIEmbeddingRequest) -> Response:
        """OpenAI-compatible embeddings (always normalised; base64 = little-endian float32)."""
        start = time.perf_counter()
        items = policy.items(request.input)
        policy.check_dimensions(request.dimensions)
        raw, tokens = await embed_raw(items, None, settings.auto_truncate, "right")
        vectors = postprocess(raw, dimensions=request.dimensions, normalize=True)
        if request.encoding_format == "base64":
            encoded: list[list[float] | str] = [
                base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors
            ]
        else:
            encoded = vectors.tolist()
        response = OpenAIEmbeddingResponse(
            data=[OpenAIEmbedding(embedding=item, index=index) for index, item in enumerate(encoded)],
            model=served_name,
            usage=OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
        return Response(
            response.model_dump_json().encode(),
            media_type="application/json",
            headers=embed_headers(start, items, tokens),
        )

    for path in OPENAI_PATHS:
        app.post(path, response_model=OpenAIEmbeddingResponse, responses=openai_errors, name=f"openai{path}")(
            counted("openai")(openai_embeddings)
        )

    @app.post("/tokenize", response_model=list[list[SimpleToken]], responses=errors)
    @counted("tokenize")
    async def tokenize(request: TokenizeRequest) -> Response:
        """The model's tokens for each input, with byte offsets into the prompt-prefixed input (never truncated)."""
        texts = [item for item in policy.items(request.inputs) if isinstance(item, str)]  # the schema takes texts only
        task = policy.task(request.prompt_name)
        policy.check_characters(texts, False, "right")  # TEI refuses here what it would refuse to embed
        prefix = embedder.describe()["tasks"].get(task, "") if task else ""
        encodings = await asyncio.to_thread(
            embedder.tokenize, texts, task=task, add_special_tokens=request.add_special_tokens
        )
        return JSONResponse(
            [simple_tokens(prefix + text, encoding) for text, encoding in zip(texts, encodings, strict=True)]
        )

    @app.get("/info", response_model=Info)
    async def info() -> Info:
        """The model and the limits this server enforces (TEI's /info, plus `prompts`)."""
        described = embedder.describe()
        return Info(
            model_id=embedder.model_id,
            model_dtype=str(described["dtype"]),
            served_model_name=served_name,
            model_type=ModelType(embedding=EmbeddingModel(pooling="+".join(described["pooling"]))),
            max_concurrent_requests=settings.max_concurrent_requests,
            max_input_length=policy.max_input_length,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_requests=settings.max_batch_requests,
            max_client_batch_size=settings.max_client_batch_size,
            auto_truncate=settings.auto_truncate,
            tokenization_workers=1,
            version=server_version(),
            prompts=dict(described["tasks"]),
            adapters=list(described["adapters"]),
        )

    # a reranker's routes: TEI's 424 "model is not a re-ranker model"
    refuse_routes(app, RERANK_ROUTES, NOT_A_RERANKER)

    return app


def simple_tokens(full: str, encoding: Encoding) -> list[dict[str, Any]]:
    """TEI's /tokenize answer for one input: each token with byte offsets into `full`, the prompt-prefixed
    text that `encoding` came from (character offsets, as tokenizers gives them, turned into bytes)."""
    tokens = []
    for token_id, token, special, (start, stop) in zip(
        encoding.ids, encoding.tokens, encoding.special_tokens_mask, encoding.offsets, strict=True
    ):
        if special:
            tokens.append(SimpleToken(id=token_id, text=token, special=True, start=None, stop=None))
        else:
            byte_start, byte_stop = len(full[:start].encode()), len(full[:stop].encode())
            tokens.append(
                SimpleToken(id=token_id, text=full[start:stop], special=False, start=byte_start, stop=byte_stop)
            )
    return [token.model_dump() for token in tokens]


def server_version() -> str:
    """The installed version of embedkit, as /info and the OpenAPI schema report it."""
    try:
        return version("embedkit")
    except PackageNotFoundError:
        return "0.0.0"
