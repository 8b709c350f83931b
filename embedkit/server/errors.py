"""Every answer other than 200, from ONE error-to-status table, in TEI's body shapes.

As TEI's `impl From<&ErrorType> for StatusCode` (router/src/http/server.rs): an error type names the
status, and the body is `{"error", "error_type"}` on native routes or `{"message", "code", "type"}` on
the OpenAI route. The framework's own refusals (404, 405, a body that is not JSON, a wrong media type)
and embedkit's InputError are translated here, at one boundary, so every error body reads the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedkit.errors import InputError
from embedkit.server.schemas import ErrorResponse, OpenAIErrorResponse

__all__ = [
    "ERROR_STATUS",
    "FRAMEWORK_ERRORS",
    "OPENAI_ERROR_PATHS",
    "OPENAI_PATHS",
    "ApiError",
    "add_error_handlers",
    "error_response",
    "validation_error",
]

OPENAI_PATHS = ("/v1/embeddings", "/embeddings")  # the OpenAI-compatible embedding routes
# routes whose errors take the OpenAI shape: those, and the Cohere/Jina-style /v1/rerank (vLLM's errors are
# OpenAI's; embedkit's client reads both shapes)
OPENAI_ERROR_PATHS = (*OPENAI_PATHS, "/v1/rerank")

# TEI's own six types come first; the rest are refusals TEI leaves to axum (empty or text/plain bodies),
# which embedkit answers in the same JSON shape.
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
FRAMEWORK_ERRORS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "Timeout",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
}


class ApiError(Exception):
    """An answer other than 200: `error_type` is a key of ERROR_STATUS, which gives the status."""

    def __init__(self, error_type: str, message: str, *, counted_as: str | None = None) -> None:
        super().__init__(message)
        self.status = ERROR_STATUS[error_type]  # KeyError: a type missing from the table is a bug here
        self.message, self.error_type = message, error_type
        # the te_request_failure label, when it is not the error type's (TEI counts a route the model does not
        # serve as err="model_type", though it answers 424 Backend)
        self.counted_as = counted_as


def validation_error(message: str) -> ApiError:
    """A 422 in TEI's "Validation" type."""
    return ApiError("Validation", message)


def error_response(path: str, error_type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """TEI's error body for `error_type` (status from ERROR_STATUS), in the OpenAI route's shape on its paths."""
    status = ERROR_STATUS[error_type]
    if path in OPENAI_ERROR_PATHS:
        body = OpenAIErrorResponse(message=message, code=status, type=error_type).model_dump()
    else:
        body = ErrorResponse(error=message, error_type=error_type).model_dump()
    return JSONResponse(body, status, headers=headers)


def add_error_handlers(app: FastAPI, on_error: Callable[[str], None]) -> None:
    """Answer every exception that leaves a route from the table; `on_error(label)` counts each (the error type,
    or the ApiError's `counted_as`)."""

    def answer(
        request: Request,
        error_type: str,
        message: str,
        headers: dict[str, str] | None = None,
        counted_as: str | None = None,
    ) -> JSONResponse:
        on_error(counted_as or error_type)
        return error_response(request.url.path, error_type, message, headers)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return answer(request, exc.error_type, exc.message, counted_as=exc.counted_as)

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
        error_type = FRAMEWORK_ERRORS.get(exc.status_code, "BadRequest" if exc.status_code < 500 else "Backend")
        message = "Failed to parse the request body as JSON" if error_type == "BadRequest" else str(exc.detail)
        return answer(request, error_type, message, dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        # last resort, outside the routes; uvicorn logs the trace (starlette re-raises after answering)
        return answer(request, "Backend", "Backend error: inference failed")
