"""`embedkit serve` of a SPLADE model: TEI's /embed_sparse (and /info, /health, /metrics) over a SpladeEncoder.

TEI serves a SPLADE checkpoint (`--pooling splade`) on `POST /embed_sparse`: the request is /embed's without
`normalize` and `dimensions` ({inputs, truncate, truncation_direction, prompt_name}), the answer one list per
input of `{"index": vocabulary id, "value": weight}` for its nonzero weights (TEI's router/src/http/types.rs
`EmbedSparseRequest`, `SparseValue`). /info reports `model_type: {"embedding": {"pooling": "splade"}}`, as
TEI's does; `/embed` answers a 422 naming /embed_sparse (a SPLADE vector is no dense embedding), /rerank
TEI's 424 "model is not a re-ranker model".

Departures from TEI, each for a reason: token-id inputs are refused (the encoder tokenises its texts
itself); `prompt_name="query"` runs an inference-free model's query route (static token weights), which
TEI does not have; passes run one at a time in a worker thread (no dynamic batcher: the encoder batches
each request's texts under its own token budget). Guard, the error table and the error bodies are the
dense server's.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from embedkit.errors import InputError
from embedkit.server.app import server_version
from embedkit.server.common import (
    NOT_A_RERANKER,
    RERANK_ROUTES,
    Admission,
    error_responses,
    new_app,
    refuse_routes,
    timing_headers,
)
from embedkit.server.errors import ApiError, validation_error
from embedkit.server.metrics import Metrics
from embedkit.server.schemas import (
    EmbeddingModel,
    EmbedRequest,
    EmbedSparseRequest,
    Info,
    ModelType,
    SparseValue,
)
from embedkit.server.settings import ServerSettings
from embedkit.sparse.splade import SpladeEncoder

__all__ = ["create_sparse_app"]


def create_sparse_app(encoder: SpladeEncoder, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving `encoder` on TEI's /embed_sparse; run it with uvicorn (`embedkit.server.serve`)."""
    settings = settings or ServerSettings()
    served_name = settings.served_model_name or encoder.name
    metrics = Metrics()
    model_lock = threading.Lock()  # one forward pass at a time: the encoder's memory is sized for one
    admission = Admission(settings.max_concurrent_requests)
    # the encoder cuts at its own max_length: `serve` loads it with settings.max_input_length as that
    max_input_length = encoder.max_length

    app = new_app("embedkit serve (sparse)", server_version(), settings, metrics, None)
    errors = error_responses()

    def texts_of(inputs: Any) -> list[str]:
        items = [inputs] if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)) else list(inputs)
        if not items or any(len(item) == 0 for item in items):
            raise ApiError("Empty", "Input validation error: `inputs` cannot be empty")
        if len(items) > settings.max_client_batch_size:
            raise validation_error(
                f"batch size {len(items)} > maximum allowed batch size {settings.max_client_batch_size}"
            )
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise validation_error(
                    f"Input validation error: inputs[{index}] is token ids; this sparse server takes texts only"
                )
        return items

    def run(texts: list[str], prompt_name: str | None, truncate: bool, direction: str) -> tuple[list, int]:
        with model_lock:
            return encoder.encode(texts, prompt_name=prompt_name, truncate=truncate, truncation_direction=direction)

    @app.post("/embed_sparse", response_model=list[list[SparseValue]], responses=errors)
    async def embed_sparse(request: EmbedSparseRequest) -> Response:
        """Per input, its nonzero SPLADE weights as [{"index", "value"}], indices ascending (TEI's /embed_sparse)."""
        start = time.perf_counter()
        metrics.inc("te_request_count", route="embed_sparse")
        texts = texts_of(request.inputs)
        truncate = settings.auto_truncate if request.truncate is None else request.truncate
        with admission.admitted():
            try:
                vectors, tokens = await asyncio.to_thread(
                    run, texts, request.prompt_name, truncate, request.truncation_direction.lower()
                )
            except InputError as exc:
                raise validation_error(f"Input validation error: {exc}") from None
        body = json.dumps(
            [
                [{"index": index, "value": value} for index, value in zip(v.indices, v.values, strict=True)]
                for v in vectors
            ]
        ).encode()
        metrics.inc("te_request_success", route="embed_sparse")
        metrics.inc("te_embed_count", len(texts))
        metrics.observe("te_request_duration", time.perf_counter() - start)
        cpu = encoder.document.device.type == "cpu"
        headers = timing_headers(start, cpu=cpu, characters=sum(len(text) for text in texts), tokens=tokens)
        return Response(body, media_type="application/json", headers=headers)

    @app.post("/embed", responses=errors)
    async def embed(request: EmbedRequest) -> Response:
        """Not available: a SPLADE model gives sparse vectors (POST /embed_sparse)."""
        raise validation_error(f"{served_name} is a SPLADE (sparse) model: use POST /embed_sparse")

    @app.get("/info", response_model=Info)
    async def info() -> Info:
        """TEI's /info for a SPLADE model: model_type.embedding.pooling is "splade"; `prompts` as embedkit adds."""
        prompts = {"document": encoder.prompts.get("document", ""), "query": encoder.prompts.get("query", "")}
        return Info(
            model_id=encoder.name,
            model_dtype=str(encoder.document.head.bias.dtype).removeprefix("torch."),
            served_model_name=served_name,
            model_type=ModelType(embedding=EmbeddingModel(pooling="splade")),
            max_concurrent_requests=settings.max_concurrent_requests,
            max_input_length=max_input_length,
            max_batch_tokens=encoder.document.batch_tokens,
            max_batch_requests=1,
            max_client_batch_size=settings.max_client_batch_size,
            auto_truncate=settings.auto_truncate,
            tokenization_workers=1,
            version=server_version(),
            prompts={**encoder.prompts, **prompts},
        )

    # a reranker's routes: TEI's 424 "model is not a re-ranker model"
    refuse_routes(app, RERANK_ROUTES, NOT_A_RERANKER)

    return app
