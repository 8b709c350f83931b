"""`embedkit serve` of a reranker: TEI's /rerank (and the Cohere/Jina-style /v1/rerank, /info, /health,
/metrics) over any `embedkit.rerank.Reranker`.

TEI's /rerank (router/src/http/server.rs `rerank`, types.rs `RerankRequest`, `Rank`): the request is
{query, texts, truncate, truncation_direction, raw_scores, return_text}, the answer a list of
{index, score, text?} sorted by score, highest first. Its refusals, kept here word for word: an empty
`texts` is 400 Empty "`texts` cannot be empty"; more texts than `max_client_batch_size` 422 Validation
"batch size N > maximum allowed batch size M" (TEI >= 1.9; TEI <= 1.8 answered 413, and embedkit's client
splits on either); a NaN score 424 Backend. /info reports `model_type: {"reranker": {"id2label", "label2id"}}`.
The embedding routes (/embed, /embed_sparse, /v1/embeddings) answer TEI's 424 "Model is not an embedding
model".

/v1/rerank takes {model, query, documents, top_n, return_documents} and answers {id, model, results:
[{index, relevance_score, document: {text}?}]} as vLLM does; `raw_scores` (infinity) or `use_activation:
false` (vLLM) give the logits. Its errors are in the OpenAI shape.

What the Reranker contract allows, and so what is honoured:
- `raw_scores`: the model's logit instead of its activation, as TEI.
- `truncate` (null: --auto-truncate): a pair past the model's limit has its DOCUMENT cut, the query kept
  whole (TEI cuts the pair's tokens from one end, query included); `truncate: false` refuses such a
  pair with 422 instead.
- `truncation_direction`: "right" (the default) cuts the document's end. "left" cuts its start where the
  reranker takes a `truncation_direction` argument (embedkit's cross-encoders do), and is refused with 422
  where it does not: the contract itself only cuts from the right.
- An empty query is 400 Empty ("`query` cannot be empty"): TEI would score it, but the contract refuses it,
  and an empty input is TEI's Empty elsewhere. An empty document is scored, as locally.
- Ties keep input order (TEI's reversed sort puts tied texts in reverse order): the order `rerank` gives
  locally, so a served ranking equals the local one.
The reranker's passes run one at a time in a worker thread (it batches each request's pairs under its
own token budget); `--max-input-length` is applied when the reranker is loaded (`serve`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import threading
import time
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from embedkit.rerank.base import Reranker, RerankResult
from embedkit.server.app import server_version
from embedkit.server.common import (
    EMBEDDING_ROUTES,
    NOT_AN_EMBEDDER,
    Admission,
    error_responses,
    new_app,
    refuse_routes,
    timing_headers,
)
from embedkit.server.errors import ApiError, validation_error
from embedkit.server.metrics import Metrics
from embedkit.server.schemas import (
    ClassifierModel,
    Info,
    OpenAIErrorResponse,
    OpenAIRerankRequest,
    Rank,
    RerankerModelType,
    RerankRequest,
)
from embedkit.server.settings import ServerSettings

__all__ = ["create_rerank_app"]


def create_rerank_app(reranker: Reranker, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving `reranker` on TEI's /rerank and on /v1/rerank; run it with uvicorn
    (`embedkit.server.serve`)."""
    settings = settings or ServerSettings()
    served_name = settings.served_model_name or reranker.model_id
    metrics = Metrics()
    model_lock = threading.Lock()  # one forward pass at a time: the reranker's memory is sized for one
    admission = Admission(settings.max_concurrent_requests)
    # embedkit's cross-encoders cut either end of the document; the contract itself only the end
    cuts_left = "truncation_direction" in inspect.signature(reranker.rerank).parameters

    app = new_app("embedkit serve (reranker)", server_version(), settings, metrics, None)
    errors = error_responses()

    def check(query: str, texts: list[str], field: str) -> None:
        """TEI's checks, in TEI's order: empty texts, then the batch size; then the contract's empty query."""
        if not texts:
            raise ApiError("Empty", f"`{field}` cannot be empty")
        if len(texts) > settings.max_client_batch_size:
            raise validation_error(
                f"batch size {len(texts)} > maximum allowed batch size {settings.max_client_batch_size}"
            )
        if not query.strip():
            raise ApiError("Empty", "`query` cannot be empty")

    async def ranked(
        query: str,
        texts: list[str],
        *,
        top_k: int | None,
        raw_scores: bool,
        truncate: bool | None,
        direction: str,
    ) -> list[RerankResult]:
        """The reranker's ranking (InputError -> 422 from the error table; a NaN score -> 424, as TEI)."""
        truncate = settings.auto_truncate if truncate is None else truncate
        extra: dict[str, Any] = {}
        if direction.lower() == "left" and truncate:
            if not cuts_left:
                raise validation_error(
                    f"Input validation error: truncation_direction 'left' is not available: {served_name} cuts the "
                    "document's end only (the query is kept whole); send 'right' or truncate: false"
                )
            extra["truncation_direction"] = "left"

        def run() -> list[RerankResult]:
            with model_lock:
                return reranker.rerank(query, texts, top_k=top_k, raw_scores=raw_scores, truncate=truncate, **extra)

        with admission.admitted():
            results = await asyncio.to_thread(run)
        if any(math.isnan(result.score) for result in results):
            raise ApiError("Backend", "score is NaN")
        metrics.inc("te_embed_count", len(texts))
        return results

    def answer(start: float, route: str, body: Any, characters: int) -> Response:
        metrics.inc("te_request_success", route=route)
        metrics.observe("te_request_duration", time.perf_counter() - start)
        headers = timing_headers(start, cpu=None, characters=characters, tokens=None)
        return Response(json.dumps(body).encode(), media_type="application/json", headers=headers)

    @app.post("/rerank", response_model=list[Rank], responses=errors)
    async def rerank(request: RerankRequest) -> Response:
        """The texts ranked against the query, highest score first, each with its index (TEI's /rerank)."""
        start = time.perf_counter()
        metrics.inc("te_request_count", route="rerank")
        check(request.query, request.texts, "texts")
        results = await ranked(
            request.query,
            request.texts,
            top_k=None,
            raw_scores=request.raw_scores,
            truncate=request.truncate,
            direction=request.truncation_direction,
        )
        body = [
            {"index": r.index, **({"text": request.texts[r.index]} if request.return_text else {}), "score": r.score}
            for r in results
        ]
        characters = len(request.query) * len(request.texts) + sum(len(text) for text in request.texts)  # as TEI
        return answer(start, "rerank", body, characters)

    openai_errors: dict[int | str, dict[str, Any]] = {status: {"model": OpenAIErrorResponse} for status in errors}

    @app.post("/v1/rerank", responses=openai_errors)
    async def openai_rerank(request: OpenAIRerankRequest) -> Response:
        """The documents ranked against the query, best `top_n` first (the Cohere/Jina-style /v1/rerank)."""
        start = time.perf_counter()
        metrics.inc("te_request_count", route="openai_rerank")
        check(request.query, request.documents, "documents")
        if request.top_n is not None and request.top_n < 1:
            raise validation_error("Input validation error: `top_n` must be a positive integer")
        results = await ranked(
            request.query,
            request.documents,
            top_k=request.top_n,
            raw_scores=request.raw_scores or request.use_activation is False,
            truncate=None,
            direction="right",
        )
        items = [
            {
                "index": r.index,
                "relevance_score": r.score,
                **({"document": {"text": request.documents[r.index]}} if request.return_documents else {}),
            }
            for r in results
        ]
        body = {"id": f"rerank-{uuid.uuid4().hex}", "model": served_name, "results": items}
        characters = len(request.query) * len(request.documents) + sum(len(text) for text in request.documents)
        return answer(start, "openai_rerank", body, characters)

    # an embedder's routes: TEI's 424 "Model is not an embedding model"
    refuse_routes(app, EMBEDDING_ROUTES, NOT_AN_EMBEDDER)

    @app.get("/info", response_model=Info)
    async def info() -> Info:
        """TEI's /info for a reranker: model_type is {"reranker": {"id2label", "label2id"}}."""
        fingerprint = reranker.fingerprint()
        labels = fingerprint.get("num_labels", 1)
        labels = labels if isinstance(labels, int) and labels > 0 else 1
        return Info(
            model_id=reranker.model_id,
            model_dtype=str(fingerprint.get("dtype") or "float32").removeprefix("torch."),
            served_model_name=served_name,
            model_type=RerankerModelType(
                reranker=ClassifierModel(
                    id2label={str(i): f"LABEL_{i}" for i in range(labels)},
                    label2id={f"LABEL_{i}": i for i in range(labels)},
                )
            ),
            max_concurrent_requests=settings.max_concurrent_requests,
            max_input_length=reranker.max_input_tokens,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_requests=1,
            max_client_batch_size=settings.max_client_batch_size,
            auto_truncate=settings.auto_truncate,
            tokenization_workers=1,
            version=server_version(),
            prompts={},
        )

    return app
