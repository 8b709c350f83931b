"""A TEI-compatible HTTP API over embedkit's local runtime (`embedkit serve`).

Routes, bodies, status codes and error shapes follow Text Embeddings Inference >= 1.9
(TEI's router/src/http/server.rs): validation 422, empty 400, overloaded 429, bad key 401, body
too large 413. Every error, the framework's own (404, 405, a body that is not JSON) included, is
answered from ONE table (`ERROR_STATUS`) in TEI's shape: {"error", "error_type"} on native routes,
{"message", "code", "type"} on the OpenAI route. `/info` adds `prompts`: the task and prompt names a
request may send as `prompt_name`, which for jina-embeddings-v3 also select its LoRA adapter.

Limits are checked before any work: body size and the API key in the ASGI layer, before the body is
parsed; batch size, emptiness, encodability, token ids and input length before anything reaches the
model. Inputs reach the batcher as token ids cut to `max_input_length`, so its budget counts what runs.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedkit.embedder import check_dimensions, check_encodable, postprocess
from embedkit.errors import InputError
from embedkit.local.embedder import LocalEmbedder
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

# The one error -> status table, as TEI's `impl From<&ErrorType> for StatusCode` (router/src/http/server.rs).
# TEI's own six types come first; the rest are refusals TEI leaves to axum (empty or text/plain bodies),
# which embedkit answers in the same JSON shape so that every error body reads the same way.
ERROR_STATUS: dict[str, int] = {
    "Empty": 400,
    "Validation": 422,
    "Tokenizer": 422,
    "Backend": 424,
    "Overloaded": 429,
    "Unhealthy": 503,
    "BadRequest": 400,  # the body is not JSON (TEI: axum's 400 text/plain)
    "Unauthorized": 401,  # TEI: 401 with an empty body
    "NotFound": 404,
    "MethodNotAllowed": 405,
    "Timeout": 408,  # the body did not arrive within --body-timeout
    "PayloadTooLarge": 413,  # TEI: axum's 413 text/plain
    "UnsupportedMediaType": 415,  # TEI: axum's 415 text/plain
}
# the error type of each status the framework (starlette / FastAPI) raises by itself
_FRAMEWORK_ERRORS = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "Timeout",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
}


@dataclass(frozen=True)
class ServerSettings:
    """What `embedkit serve` was started with; the defaults are TEI's."""

    served_model_name: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_client_batch_size: int = 32
    max_batch_tokens: int = 16384
    max_input_length: int | None = None  # tokens per input, None: the model's limit; inputs are cut (or refused) here
    auto_truncate: bool = True
    max_concurrent_requests: int = 512  # embedding requests in flight at once; more -> 429
    max_batch_requests: int | None = None  # requests packed into one forward call; 1 = no batching
    payload_limit: int = 2_000_000  # bytes
    body_timeout: float = 10.0  # seconds a client may take to send its whole body (slow-loris bodies)
    max_connections: int = 1024  # open connections and tasks; beyond it uvicorn answers 503


class ApiError(Exception):
    """An answer other than 200: `error_type` is a key of ERROR_STATUS, which gives the status."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = ERROR_STATUS[error_type]  # KeyError: a type missing from the table is a bug here
        self.message, self.error_type = message, error_type


def _validation(message: str) -> ApiError:
    return ApiError("Validation", message)


def _error_response(path: str, error_type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """TEI's error body for `error_type` (status from ERROR_STATUS), in the OpenAI route's shape on its paths."""
    status = ERROR_STATUS[error_type]
    if path in OPENAI_PATHS:
        body = OpenAIErrorResponse(message=message, code=status, type=error_type).model_dump()
    else:
        body = ErrorResponse(error=message, error_type=error_type).model_dump()
    return JSONResponse(body, status, headers=headers)


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
                await _error_response(path, "Unauthorized", "missing or wrong API key")(scope, receive, send)
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
                await _error_response(path, "Timeout", message_text)(scope, receive, send)
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
        await _error_response(path, "PayloadTooLarge", message)(scope, receive, send)


def create_app(embedder: LocalEmbedder, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving `embedder`; run it with uvicorn (see `embedkit.server.serve`).

    Raises InputError when `settings.max_input_length` leaves no room for a token beyond the special ones.
    """
    settings = settings or ServerSettings()
    max_input_length = min(settings.max_input_length or embedder.max_input_tokens, embedder.max_input_tokens)
    if settings.max_input_length and settings.max_input_length > embedder.max_input_tokens:
        log.warning(
            "--max-input-length %d is past the model's limit of %d tokens; using %d",
            settings.max_input_length,
            embedder.max_input_tokens,
            max_input_length,
        )
    overhead = embedder.input_overhead()
    if max_input_length <= overhead:
        raise InputError(
            f"max_input_length={max_input_length} leaves no room for text: the model adds {overhead} special "
            "tokens to every input"
        )
    served_name = settings.served_model_name or embedder.model_id
    metrics = Metrics()
    embedder.batch_tokens = settings.max_batch_tokens
    state: dict[str, DynamicBatcher] = {}
    in_flight = [0]  # embedding requests admitted and not yet answered (the event loop is single-threaded)

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

    app = FastAPI(title="embedkit serve", version=_version(), lifespan=lifespan)
    app.add_middleware(_Guard, settings=settings)

    # -- errors: every answer other than 200 leaves through ApiError's table ----------------------

    def answer(request: Request, error_type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.inc("te_request_failure", err=error_type.lower())
        return _error_response(request.url.path, error_type, message, headers)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return answer(request, exc.error_type, exc.message)

    @app.exception_handler(InputError)
    async def on_input_error(request: Request, exc: InputError) -> JSONResponse:
        # the client's input, wherever it was found wrong (the model call included): never a backend failure
        return answer(request, "Validation", f"Input validation error: {exc}")

    @app.exception_handler(RequestValidationError)
    async def on_bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        invalid = [error for error in errors if error.get("type") == "json_invalid"]
        if invalid:
            reason = (invalid[0].get("ctx") or {}).get("error")
            return answer(
                request, "BadRequest", "Failed to parse the request body as JSON" + (f": {reason}" if reason else "")
            )
        content_type = request.headers.get("content-type", "")
        if content_type and "json" not in content_type.split(";")[0].lower():  # FastAPI then reads the body as bytes
            return answer(request, "UnsupportedMediaType", "Expected request with `Content-Type: application/json`")
        # field paths and pydantic's reasons only: the input values are not echoed back
        where = "; ".join(
            f"{'.'.join(str(p) for p in error.get('loc', ())[1:]) or 'body'}: {error.get('msg')}"
            for error in errors[:5]
        )
        return answer(request, "Validation", f"Failed to deserialize the JSON body into the target type: {where}")

    @app.exception_handler(StarletteHTTPException)
    async def on_framework_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # routing (404, 405) and FastAPI's body reading (400: not JSON, nested too deep, not UTF-8)
        error_type = _FRAMEWORK_ERRORS.get(exc.status_code, "BadRequest" if exc.status_code < 500 else "Backend")
        message = "Failed to parse the request body as JSON" if error_type == "BadRequest" else str(exc.detail)
        return answer(request, error_type, message, dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        # last resort, outside the routes; uvicorn logs the trace (starlette re-raises after answering)
        return answer(request, "Backend", "Backend error: inference failed")

    # -- shared steps ------------------------------------------------------------------------------

    def items_of(inputs: str | list[Any]) -> list[str | list[int]]:
        """TEI's untagged `Input` -> one item per input: a text or a token-id list."""
        if isinstance(inputs, str) or (inputs and all(isinstance(value, int) for value in inputs)):
            items: list[str | list[int]] = [inputs]  # a single text, or ONE token-id input
        else:
            items = list(inputs)
        if not items or any(len(item) == 0 for item in items):
            raise ApiError("Empty", "Input validation error: `inputs` cannot be empty")
        if len(items) > settings.max_client_batch_size:
            raise _validation(f"batch size {len(items)} > maximum allowed batch size {settings.max_client_batch_size}")
        for index, item in enumerate(items):
            if isinstance(item, str):
                check_encodable(item, f"inputs[{index}]", index=index)  # a lone surrogate: InputError, 422
        return items

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

    def check_characters(items: list[str | list[int]], truncate: bool, direction: str) -> list[str | list[int]]:
        """TEI's character pre-check: a text over 250 characters per allowed token is refused, or cut."""
        limit = max_input_length * CHARS_PER_TOKEN_LIMIT
        out = list(items)
        for index, item in enumerate(items):
            if isinstance(item, str) and len(item) > limit:
                if not truncate:
                    raise _validation(
                        f"Input validation error: `inputs` must have less than {limit} characters. "
                        f"Given: {len(item)} (inputs[{index}])"
                    )
                out[index] = item[:limit] if direction == "right" else item[-limit:]
        return out

    def token_ids(items: list[str | list[int]], task: str | None, truncate: bool, direction: str) -> list[list[int]]:
        """What the model runs for each item, cut to max_input_length (or refused past it); runs in a thread."""
        items = check_characters(items, truncate, direction)
        ids = embedder.encode(
            items, task=task, max_length=max_input_length if truncate else None, truncation_direction=direction
        )
        for index, row in enumerate(ids):
            if len(row) > max_input_length:  # only without truncation
                raise _validation(
                    f"Input validation error: `inputs` must have less than {max_input_length} tokens. "
                    f"Given: {len(row)} (inputs[{index}])"
                )
        return ids

    @contextlib.contextmanager
    def admitted() -> Iterator[None]:
        # TEI >= 1.9 takes one permit per input (PR #726), so 32 clients posting 32 texts each hold 1024 of the
        # default 512 and get 429 while the model has room; embedkit counts requests, as the flag's name says
        if in_flight[0] >= settings.max_concurrent_requests:
            raise ApiError("Overloaded", "Model is overloaded")
        in_flight[0] += 1
        try:
            yield
        finally:
            in_flight[0] -= 1

    async def embed_raw(
        items: list[str | list[int]], task: str | None, truncate: bool, direction: str
    ) -> tuple[np.ndarray, int]:
        """Raw vectors of `items` and the tokens that ran (prompt and special tokens included)."""
        with admitted():
            ids = await asyncio.to_thread(token_ids, items, task, truncate, direction.lower())
            for row in ids:
                metrics.observe("te_request_input_length", len(row))
            try:
                vectors = await state["batcher"].embed(ids, task=task)
            except Overloaded as exc:
                raise ApiError("Overloaded", f"Model is overloaded: {exc}") from None
        return vectors, sum(len(row) for row in ids)

    def timing_headers(start: float, items: list[str | list[int]], tokens: int) -> dict[str, str]:
        elapsed = str(int((time.perf_counter() - start) * 1000))
        return {
            "x-compute-type": "cpu" if embedder.device.type == "cpu" else "gpu",
            "x-compute-time": elapsed,
            "x-total-time": elapsed,
            "x-compute-characters": str(sum(len(item) for item in items)),  # token-id inputs count ids, as TEI
            "x-compute-tokens": str(tokens),
        }

    def counted(route: str) -> Callable[[Callable[..., Awaitable[Response]]], Callable[..., Awaitable[Response]]]:
        def wrap(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
            @functools.wraps(handler)  # FastAPI reads the handler's signature through __wrapped__
            async def run(*args: Any, **kwargs: Any) -> Response:
                start = time.perf_counter()
                metrics.inc("te_request_count", route=route)
                try:
                    response = await handler(*args, **kwargs)
                except (ApiError, InputError, StarletteHTTPException):
                    raise  # answered from the table by the handlers above
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

    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse} for status in sorted(set(ERROR_STATUS.values()) - {503})
    }

    @app.post("/embed", response_model=list[list[float]], responses=errors)
    @counted("embed")
    async def embed(request: EmbedRequest) -> Response:
        """Pooled embeddings, one per input (a text or a token-id list), in input order (TEI's /embed)."""
        start = time.perf_counter()
        items = items_of(request.inputs)
        task = task_of(request.prompt_name)
        check_dims(request.dimensions)
        truncate = settings.auto_truncate if request.truncate is None else request.truncate
        raw, tokens = await embed_raw(items, task, truncate, request.truncation_direction)
        vectors = postprocess(raw, dimensions=request.dimensions, normalize=request.normalize)
        body = json.dumps(vectors.tolist()).encode()
        return Response(body, media_type="application/json", headers=timing_headers(start, items, tokens))

    openai_errors: dict[int | str, dict[str, Any]] = {status: {"model": OpenAIErrorResponse} for status in errors}

    async def openai_embeddings(request: OpenAIEmbeddingRequest) -> Response:
        """OpenAI-compatible embeddings (always normalised; base64 = little-endian float32)."""
        start = time.perf_counter()
        items = items_of(request.input)
        check_dims(request.dimensions)
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
            headers=timing_headers(start, items, tokens),
        )

    for path in OPENAI_PATHS:
        app.post(path, response_model=OpenAIEmbeddingResponse, responses=openai_errors, name=f"openai{path}")(
            counted("openai")(openai_embeddings)
        )

    @app.post("/tokenize", response_model=list[list[SimpleToken]], responses=errors)
    @counted("tokenize")
    async def tokenize(request: TokenizeRequest) -> Response:
        """The model's tokens for each input, with byte offsets into the prompt-prefixed input (never truncated)."""
        texts = [item for item in items_of(request.inputs) if isinstance(item, str)]  # the schema takes texts only
        task = task_of(request.prompt_name)
        check_characters(texts, False, "right")  # TEI refuses here what it would refuse to embed
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
