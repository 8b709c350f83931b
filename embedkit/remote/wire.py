"""The two wire formats: TEI's native routes (/embed, /embed_sparse, /rerank, /tokenize, /info, /health) and the
OpenAI-compatible ones (/v1/embeddings, and the Cohere/Jina-style /v1/rerank that vLLM and infinity serve).
Building requests and reading answers, nothing else: no I/O, no retries, no state.

Reference: TEI's router/src/http/server.rs and types.rs (TEI 1.7 - 1.9.3), the OpenAI embeddings API,
vLLM's RerankRequest / RerankResponse (results[i].document is {"text": ...}) and infinity's RerankInput /
ReRankResult (results[i].document is a plain string, `data` instead of `results` before 0.0.50).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

import httpx
import numpy as np

from embedkit.errors import RemoteError
from embedkit.remote.models import Answer, Batch, Options, RerankBatch, ServerInfo, Token
from embedkit.remote.settings import ClientSettings
from embedkit.rerank.base import RerankResult
from embedkit.sparse.base import SparseVector

__all__ = [
    "embed_request",
    "embed_sparse_request",
    "get_request",
    "read_info",
    "read_json",
    "read_rerank",
    "read_sparse",
    "read_tokens",
    "read_vectors",
    "rerank_request",
    "tokenize_request",
    "url",
]


def url(settings: ClientSettings, route: str) -> str:
    if settings.api == "openai" and settings.base_url.endswith("/v1"):
        # an OpenAI-style base URL already ends in /v1; TEI's other routes sit at the root
        base = settings.base_url
        return base + route[3:] if route.startswith("/v1/") else base[:-3] + route
    return settings.base_url + route


def _request(settings: ClientSettings, method: str, route: str, body: Any = None) -> httpx.Request:
    headers = {"Accept": "application/json"}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    # the timeout travels with the request, so it is the settings' whatever the shell's httpx client says
    extensions = {"timeout": settings.timeout.as_dict()}
    return httpx.Request(method, url(settings, route), json=body, headers=headers, extensions=extensions)


def get_request(settings: ClientSettings, route: str) -> httpx.Request:
    """GET /info or /health."""
    return _request(settings, "GET", route)


def embed_request(settings: ClientSettings, batch: Batch, model: str | None) -> httpx.Request:
    """POST /embed (TEI) or /v1/embeddings (OpenAI: `model` names the served model) for one batch."""
    options = batch.options
    texts = [options.prefix + text if isinstance(text, str) else text for text in batch.texts]
    if settings.api == "tei":
        body: dict[str, Any] = {
            "inputs": texts,
            "normalize": False,  # raw vectors; embedkit's one policy normalises them on this side
            "truncate": options.truncate,
            "truncation_direction": options.direction.capitalize(),  # TEI <= 1.8 knows only Left/Right
        }
        if options.prompt_name is not None:
            body["prompt_name"] = options.prompt_name
        route = "/embed"
    else:
        body = {"input": texts, "model": model, "encoding_format": settings.encoding_format}
        route = "/v1/embeddings"
    if options.dimensions is not None:
        body["dimensions"] = options.dimensions
    return _request(settings, "POST", route, body)


def embed_sparse_request(settings: ClientSettings, batch: Batch) -> httpx.Request:
    """POST /embed_sparse (TEI's SPLADE route) for one batch of texts."""
    options = batch.options
    body: dict[str, Any] = {
        "inputs": batch.texts,
        "truncate": options.truncate,
        "truncation_direction": options.direction.capitalize(),
    }
    if options.prompt_name is not None:
        body["prompt_name"] = options.prompt_name
    return _request(settings, "POST", "/embed_sparse", body)


def read_sparse(answer: Answer, body: bytes, batch: Batch) -> list[SparseVector]:
    """/embed_sparse's answer: per input a list of {"index", "value"}; RemoteError unless it is exactly one
    list per input of non-negative int indices (unique) and finite values. Indices come back ascending."""
    where = answer.where
    data = read_json(body, where)
    if not isinstance(data, list) or len(data) != len(batch.texts):
        got = len(data) if isinstance(data, list) else "no"
        raise RemoteError(f"{where} answered {got} sparse vectors for {len(batch.texts)} texts")
    vectors = []
    for position, entries in enumerate(data):
        pairs: dict[int, float] = {}
        try:
            for entry in entries:
                index, value = entry["index"], entry["value"]
                if isinstance(index, bool) or not isinstance(index, int) or index < 0 or index in pairs:
                    raise ValueError(index)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(value)
                pairs[index] = float(value)
        except (KeyError, TypeError, ValueError):
            raise RemoteError(
                f"{where} answered a sparse vector for texts[{batch.indices[position]}] that is not a list of "
                "{index: unique non-negative int, value: finite number}"
            ) from None
        ordered = sorted(pairs)
        vectors.append(SparseVector(ordered, [pairs[i] for i in ordered]))
    return vectors


def rerank_request(settings: ClientSettings, batch: RerankBatch, model: str | None) -> httpx.Request:
    """POST /rerank (TEI: {query, texts, raw_scores, return_text, truncate, truncation_direction}) or /v1/rerank
    (vLLM, infinity: {model, query, documents, top_n, return_documents}) for one part of the documents.

    Unset truncation fields are left out, so the server's default applies. On /v1/rerank raw scores are
    asked for both ways they are spelt there (infinity's `raw_scores`, vLLM's `use_activation: false`)."""
    options = batch.options
    body: dict[str, Any]
    if settings.api == "tei":
        body = {
            "query": options.query,
            "texts": batch.texts,
            "raw_scores": options.raw_scores,
            "return_text": options.return_documents,
        }
        if options.truncate is not None:
            body["truncate"] = options.truncate
        if options.direction is not None:
            body["truncation_direction"] = options.direction.capitalize()  # TEI <= 1.8 knows only Left/Right
        return _request(settings, "POST", "/rerank", body)
    body = {"model": model, "query": options.query, "documents": batch.texts}
    body["return_documents"] = options.return_documents
    if options.top_n is not None:
        body["top_n"] = min(options.top_n, len(batch.texts))
    if options.raw_scores:
        body["raw_scores"] = True
        body["use_activation"] = False
    return _request(settings, "POST", "/v1/rerank", body)


def read_rerank(settings: ClientSettings, answer: Answer, body: bytes, batch: RerankBatch) -> list[RerankResult]:
    """One part's results with indices into the CALLER's list (not the part's), in the server's order.

    TEI answers a bare list of {index, score, text?}; /v1/rerank an object whose `results` (infinity before
    0.0.50: `data`) are {index, relevance_score, document?}, the document {"text": ...} (vLLM) or a string
    (infinity). RemoteError unless every index is a distinct position of the part, every score finite, and
    (without top_n) every document answered; a document text is taken from the caller's list, not the answer.
    """
    where = answer.where
    data = read_json(body, where)
    if settings.api == "tei":
        items, score_key = data, "score"
    else:
        items = data.get("results", data.get("data")) if isinstance(data, dict) else None
        score_key = "relevance_score"
    if not isinstance(items, list):
        raise RemoteError(f"{where} answered something other than a list of results")
    count = len(batch.texts)
    wanted = count if batch.options.top_n is None or settings.api == "tei" else min(batch.options.top_n, count)
    if len(items) != wanted:
        raise RemoteError(f"{where} answered {len(items)} results for {count} documents (expected {wanted})")
    seen: set[int] = set()
    results = []
    for position, item in enumerate(items):
        index = item.get("index") if isinstance(item, dict) else None
        score = item.get(score_key) if isinstance(item, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count or index in seen:
            raise RemoteError(f"{where} answered result {position} with a missing, repeated or out-of-range index")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise RemoteError(
                f"{where} answered no finite {score_key} for texts[{batch.indices[index]}]: {str(score)[:40]}"
            )
        seen.add(index)
        document = batch.texts[index] if batch.options.return_documents else None
        results.append(RerankResult(index=batch.indices[index], score=float(score), document=document))
    return results


def tokenize_request(
    settings: ClientSettings, texts: list[str], options: Options, add_special_tokens: bool
) -> httpx.Request:
    """POST /tokenize (TEI only) for `texts` with the task's prefix or prompt_name."""
    body: dict[str, Any] = {
        "inputs": [options.prefix + text for text in texts],
        "add_special_tokens": add_special_tokens,
    }
    if options.prompt_name is not None:
        body["prompt_name"] = options.prompt_name
    return _request(settings, "POST", "/tokenize", body)


def read_json(body: bytes, where: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RemoteError(f"{where} answered invalid JSON ({len(body)} bytes)") from None


def read_info(body: bytes, base_url: str) -> ServerInfo:
    """TEI's info object (embedkit serve adds `prompts` and `adapters`); RemoteError when it is not one."""
    data = read_json(body, f"{base_url}/info")
    if not isinstance(data, dict) or not isinstance(data.get("model_id"), str):
        raise RemoteError(f"{base_url}/info is not TEI's info object (no model_id)")
    batch_size = data.get("max_client_batch_size")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise RemoteError(f"{base_url}/info has no usable max_client_batch_size: {batch_size!r}")
    max_input = data.get("max_input_length")
    prompts = data.get("prompts")
    if prompts is not None and not (
        isinstance(prompts, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items())
    ):
        raise RemoteError(f"{base_url}/info `prompts` is not a mapping of names to prompt texts")
    adapters = data.get("adapters") or ()
    return ServerInfo(
        model_id=data["model_id"],
        served_model_name=str(data.get("served_model_name") or data["model_id"]),
        max_client_batch_size=batch_size,
        max_input_length=max_input if isinstance(max_input, int) and max_input > 0 else None,
        prompts=prompts,
        adapters=tuple(str(name) for name in adapters),
        version=data.get("version"),
        raw=data,
        model_type=_model_type(data.get("model_type")),
    )


def _model_type(value: Any) -> str | None:
    """TEI's `model_type` is an object with one key (embedding, reranker or classifier); older servers omit it."""
    if isinstance(value, dict) and len(value) == 1:
        return str(next(iter(value)))
    return value if isinstance(value, str) else None


def read_vectors(settings: ClientSettings, answer: Answer, body: bytes, batch: Batch) -> np.ndarray:
    """The batch's vectors (float32, one row per input, as wide as the server made them), or RemoteError if
    the answer is not exactly one finite vector per input. TEI answers a bare list of vectors; OpenAI a
    `data` list of {index, embedding} items, the embedding a list of floats or base64 float32 bytes."""
    where = answer.where
    data = read_json(body, where)
    rows = _openai_rows(data, len(batch.texts), where) if settings.api == "openai" else data
    try:
        vectors = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError):
        raise RemoteError(f"{where} answered something other than a list of equal-length vectors") from None
    if vectors.ndim != 2 or vectors.shape[0] != len(batch.texts) or vectors.shape[1] == 0:
        raise RemoteError(
            f"{where} answered {vectors.shape[0] if vectors.ndim else 0} vectors of shape {vectors.shape[1:]} "
            f"for {len(batch.texts)} texts"
        )
    if not np.isfinite(vectors).all():
        bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
        raise RemoteError(f"{where} answered a vector with NaN or Inf values for texts[{batch.indices[bad]}]")
    return vectors


def _openai_rows(data: Any, count: int, where: str) -> list[Any]:
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list) or len(items) != count:
        got = len(items) if isinstance(items, list) else "no"
        raise RemoteError(f"{where} answered {got} embeddings for {count} texts")
    rows: list[Any] = [None] * count
    for position, item in enumerate(items):
        index = item.get("index", position) if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or rows[index] is not None:
            raise RemoteError(f"{where} answered data[{position}] with a missing, repeated or out-of-range index")
        embedding = item.get("embedding")
        if isinstance(embedding, str):
            try:
                raw = base64.b64decode(embedding, validate=True)
            except (binascii.Error, ValueError):
                raise RemoteError(f"{where} answered data[{position}].embedding that is not base64") from None
            if len(raw) % 4:
                raise RemoteError(f"{where} answered data[{position}].embedding that is not float32 bytes")
            embedding = np.frombuffer(raw, dtype="<f4")
        rows[index] = embedding
    return rows


def read_tokens(answer: Answer, body: bytes, texts: list[str], prefix: str) -> list[list[Token]]:
    """/tokenize's tokens for each text, TEI's byte offsets turned into character offsets of prefix + text."""
    where = answer.where
    data = read_json(body, where)
    if not isinstance(data, list) or len(data) != len(texts):
        raise RemoteError(
            f"{where} answered {len(data) if isinstance(data, list) else 'no'} token lists for {len(texts)} texts"
        )
    out = []
    for text, tokens in zip(texts, data, strict=True):
        char_at = _byte_to_char(prefix + text)
        try:
            out.append(
                [
                    Token(
                        int(t["id"]),
                        str(t["text"]),
                        bool(t["special"]),
                        None if t.get("start") is None else char_at[int(t["start"])],
                        None if t.get("stop") is None else char_at[int(t["stop"])],
                    )
                    for t in tokens
                ]
            )
        except (KeyError, TypeError, ValueError, IndexError):
            raise RemoteError(f"{where} answered tokens that are not TEI's shape or offsets past the text") from None
    return out


def _byte_to_char(text: str) -> list[int]:
    """char_at[b] = the character index at UTF-8 byte offset b (and at len(bytes), len(text))."""
    char_at = [i for i, ch in enumerate(text) for _ in range(len(ch.encode()))]
    char_at.append(len(text))
    return char_at
