"""A TEI-compatible HTTP API over embedkit's local runtime (`embedkit serve`).

Routes, bodies, status codes and error shapes follow Text Embeddings Inference >= 1.9
(../shared/reference/tei-http-api.md): validation 422, empty 400, overloaded 429, bad key 401, body
too large 413. Native routes answer errors as {"error", "error_type"}, the OpenAI route as
{"message", "code", "type"}. `/info` adds `prompts`: the task and prompt names a request may send
as `prompt_name`, which for jina-embeddings-v3 also select its LoRA adapter.

Limits are checked before any work: body size and the API key in the ASGI layer, before the body is
parsed; batch size, emptiness and input length before anything reaches the model.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedkit.embedder import check_dimensions, postprocess
from embedkit.errors import InputError
from embedkit.runtime import LocalEmbedder
from embedkit.server.batching import DynamicBatcher, Overloaded
from embedkit.server.metrics import Metrics
from embedkit.server.schemas import (
    EmbeddingModel,
    EmbedRequest,
    ErrorResponse,
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

__all__ = ["ServerSettings", "create_app"]

log = logging.getLogger(__name__)

OPEN_PATHS = ("/health", "/ping", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect")
OPENAI_PATHS = ("/v1/embeddings", "/embeddings")
CHARS_PER_TOKEN_LIMIT = 250  # TEI refuses (or cuts) inputs over 250 characters per allowed token


@dataclass(frozen=True)
class ServerSettings:
    """What `embedkit serve` was started with; the defaults are TEI's."""

    served_model_name: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_client_batch_size: int = 32
    max_batch_tokens: int = 16384
    max_input_length: int | None = None  # None: the model's limit
    auto_truncate: bool = True
    max_concurrent_requests: int = 512  # texts queued or running at once; more -> 429
    max_batch_requests: int | None = None  # requests packed into one forward call; 1 = no batching
    payload_limit: int = 2_000_000  # bytes
    body_timeout: float = 10.0  # seconds a client may take to send its whole body (slow-loris bodies)
    max_connections: int = 1024  # open connections and tasks; beyond it uvicorn answers 503


class ApiError(Exception):
    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type


def _validation(message: str) -> ApiError:
    return ApiError(422, message, "Validation")


def _error_response(path: str, status: int, message: str, error_type: str) -> JSONResponse:
    if path in OPENAI_PATHS:
        return JSONResponse(OpenAIErrorResponse(message=message, code=status, type=error_type).model_dump(), status)
    return JSONResponse(ErrorResponse(error=message, error_type=error_type).model_dump(), status)


class _Guard:
    """ASGI layer: API key and body size, answered before FastAPI parses anything."""

    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings
        self._expected = f"Bearer {settings.api_key}".encode() if settings.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self._expected is not None and path not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):  # constant time; the key is never logged
                await _error_response(path, 401, "missing or wrong API key", "Unauthorized")(scope, receive, send)
                return
        limit = self.settings.payload_limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(path, scope, receive, send)
            return
        body, more = bytearray(), True
        deadline = asyncio.get_running_loop().time() + self.settings.body_timeout
        while more:
            try:
                # a client trickling its body must not hold a connection (and its memory) for ever
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                message_text = f"request body not received within {self.settings.body_timeout:g} s"
                await _error_response(path, 408, message_text, "Timeout")(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await self._too_large(path, scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body is larger than the server's limit of {self.settings.payload_limit} bytes"
        await _error_response(path, 413, message, "Validation")(scope, receive, send)


def create_app(embedder: LocalEmbedder, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving `embedder`; run it with uvicorn (see `embedkit.server.serve`)."""
    settings = settings or ServerSettings()
    max_input_length = min(settings.max_input_length or embedder.max_input_tokens, embedder.max_input_tokens)
    served_name = settings.served_model_name or embedder.model_id
    metrics = Metrics()
    embedder.batch_tokens = settings.max_batch_tokens
    state: dict[str, DynamicBatcher] = {}

    def record_batch(texts: int, tokens: int, seconds: float) -> None:
        metrics.observe("te_batch_next_size", texts)
        metrics.observe("te_batch_next_tokens", tokens)
        metrics.inc("te_embed_count", texts)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = DynamicBatcher(
            embedder,
            max_batch_tokens=settings.max_batch_tokens,
            max_queued_texts=settings.max_concurrent_requests,
            max_batch_requests=settings.max_batch_requests,
            on_batch=record_batch,
        )
        batcher.start()
        state["batcher"] = batcher
        metrics.queue_size = lambda: batcher.queued_texts
        yield
        await batcher.close()  # in-flight requests finish first

    app = FastAPI(title="embedkit serve", version=_version(), lifespan=lifespan)
    app.add_middleware(_Guard, settings=settings)

    # -- errors -------------------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.inc("te_request_failure", err=exc.error_type.lower())
        return _error_response(request.url.path, exc.status, exc.message, exc.error_type)

    @app.exception_handler(RequestValidationError)
    async def on_bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(error.get("type") == "json_invalid" for error in errors):
            status, message = 400, "Failed to parse the request body as JSON"
        else:
            where = "; ".join(
                f"{'.'.join(str(p) for p in error.get('loc', ())[1:]) or 'body'}: {error.get('msg')}"
                for error in errors[:5]
            )
            status, message = 422, f"Failed to deserialize the JSON body into the target type: {where}"
        metrics.inc("te_request_failure", err="validation")
        return _error_response(request.url.path, status, message, "Validation")

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s failed", request.url.path)  # the trace stays in the server log, not the response
        metrics.inc("te_request_failure", err="inference")
        return _error_response(request.url.path, 424, "Backend error: inference failed", "Backend")

    # -- shared steps ------------------------------------------------------------------------------

    def texts_of(inputs: str | list[str]) -> list[str]:
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts or any(text == "" for text in texts):
            raise ApiError(400, "Input validation error: `inputs` cannot be empty", "Empty")
        if len(texts) > settings.max_client_batch_size:
            raise _validation(f"batch size {len(texts)} > maximum allowed batch size {settings.max_client_batch_size}")
        return texts

    def task_of(prompt_name: str | None) -> str | None:
        if prompt_name is not None and prompt_name not in embedder.tasks:
            raise _validation(
                f"Input validation error: prompt_name {prompt_name!r} was not found in the model's prompts "
                f"and tasks. Available prompts: {embedder.tasks}"
            )
        return prompt_name

    def check_dims(dimensions: int | None) -> None:
        if dimensions is None:
            return
        if dimensions <= 0:
            raise _validation("Input validation error: `dimensions` should be positive")
        try:
            check_dimensions(dimensions, embedder.dimension, embedder.matryoshka_dimensions)
        except InputError as exc:
            raise _validation(f"Input validation error: {exc}") from None

    async def embed_raw(texts: list[str], task: str | None, truncate: bool, direction: str) -> tuple[np.ndarray, int]:
        limit = max_input_length * CHARS_PER_TOKEN_LIMIT
        for index, text in enumerate(texts):
            if len(text) > limit:
                if not truncate:
                    raise _validation(
                        f"Input validation error: `inputs` must have less than {limit} characters. "
                        f"Given: {len(text)} (inputs[{index}])"
                    )
                texts[index] = text[:limit] if direction.lower() == "right" else text[-limit:]
        encodings = await asyncio.to_thread(embedder.tokenize, texts, task=task)
        lengths = [len(encoding.ids) for encoding in encodings]
        for index, length in enumerate(lengths):
            if length > max_input_length and not truncate:
                raise _validation(
                    f"Input validation error: `inputs` must have less than {max_input_length} tokens. "
                    f"Given: {length} (inputs[{index}])"
                )
            metrics.observe("te_request_input_length", length)
        tokens = sum(min(length, max_input_length) for length in lengths)
        try:
            vectors = await state["batcher"].embed(texts, task=task, tokens=tokens, direction=direction.lower())
        except Overloaded:
            raise ApiError(429, "Model is overloaded", "Overloaded") from None
        return vectors, tokens

    def timing_headers(start: float, texts: list[str], tokens: int) -> dict[str, str]:
        elapsed = str(int((time.perf_counter() - start) * 1000))
        return {
            "x-compute-type": "cpu" if embedder.device.type == "cpu" else "gpu",
            "x-compute-time": elapsed,
            "x-total-time": elapsed,
            "x-compute-characters": str(sum(len(text) for text in texts)),
            "x-compute-tokens": str(tokens),
        }

    def counted(route: str) -> Callable[[Callable[..., Awaitable[Response]]], Callable[..., Awaitable[Response]]]:
        def wrap(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
            @functools.wraps(handler)  # FastAPI reads the handler's signature through __wrapped__
            async def run(*args: Any, **kwargs: Any) -> Response:
                start = time.perf_counter()
                metrics.inc("te_request_count", route=route)
                response = await handler(*args, **kwargs)
                metrics.inc("te_request_success", route=route)
                metrics.observe("te_request_duration", time.perf_counter() - start)
                return response

            return run

        return wrap

    # -- routes ------------------------------------------------------------------------------------

    errors = {
        400: {"model": ErrorResponse},
        401: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        424: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
    }

    @app.post("/embed", response_model=list[list[float]], responses=errors)
    @counted("embed")
    async def embed(request: EmbedRequest) -> Response:
        """Pooled embeddings, one per input, in input order (TEI's /embed)."""
        start = time.perf_counter()
        texts = texts_of(request.inputs)
        task = task_of(request.prompt_name)
        check_dims(request.dimensions)
        truncate = settings.auto_truncate if request.truncate is None else request.truncate
        raw, tokens = await embed_raw(texts, task, truncate, request.truncation_direction)
        vectors = postprocess(raw, dimensions=request.dimensions, normalize=request.normalize)
        body = json.dumps(vectors.tolist()).encode()
        return Response(body, media_type="application/json", headers=timing_headers(start, texts, tokens))

    openai_errors = {status: {"model": OpenAIErrorResponse} for status in errors}

    async def openai_embeddings(request: OpenAIEmbeddingRequest) -> Response:
        """OpenAI-compatible embeddings (always normalised; base64 = little-endian float32)."""
        start = time.perf_counter()
        texts = texts_of(request.input)
        check_dims(request.dimensions)
        raw, tokens = await embed_raw(texts, None, settings.auto_truncate, "right")
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
            headers=timing_headers(start, texts, tokens),
        )

    for path in OPENAI_PATHS:
        app.post(path, response_model=OpenAIEmbeddingResponse, responses=openai_errors, name=f"openai{path}")(
            counted("openai")(openai_embeddings)
        )

    @app.post("/tokenize", response_model=list[list[SimpleToken]], responses=errors)
    @counted("tokenize")
    async def tokenize(request: TokenizeRequest) -> Response:
        """The model's tokens for each input, with byte offsets into the prompt-prefixed input."""
        texts = texts_of(request.inputs)
        task = task_of(request.prompt_name)
        prefix = embedder.describe()["tasks"].get(task, "") if task else ""
        encodings = await asyncio.to_thread(
            embedder.tokenize, texts, task=task, add_special_tokens=request.add_special_tokens
        )
        out = []
        for text, encoding in zip(texts, encodings, strict=True):
            full = prefix + text
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
            out.append([token.model_dump() for token in tokens])
        return JSONResponse(out)

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
            max_input_length=max_input_length,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_requests=settings.max_batch_requests,
            max_client_batch_size=settings.max_client_batch_size,
            auto_truncate=settings.auto_truncate,
            tokenization_workers=1,
            version=_version(),
            prompts=dict(described["tasks"]),
            adapters=list(described["adapters"]),
        )

    @app.get("/health")
    @app.get("/ping", include_in_schema=False)
    async def health() -> Response:
        """200 with an empty body while the model answers."""
        return Response(status_code=200)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        """Prometheus text: requests, failures, latency, input lengths, batch sizes and tokens, queue."""
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def _version() -> str:
    try:
        return version("embedkit")
    except PackageNotFoundError:
        return "0.0.0"
