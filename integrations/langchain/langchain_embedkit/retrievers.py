"""EmbedkitRetriever: LangChain's BaseRetriever over a Qdrant collection written by embedkit's ingest."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.utils import secret_from_env
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from embedkit import InputError
from embedkit.ingestion.records import DOC_ID, METADATA, PAGE_CONTENT, chunk_fields
from embedkit.sinks import QdrantSink
from embedkit.sinks.base import SearchHit
from embedkit.sinks.qdrant import VECTOR_NAME_PRESETS
from embedkit.sparse import encoder_for_collection
from langchain_embedkit.embeddings import EmbedkitEmbeddings, embeddings_for_collection

__all__ = ["EmbedkitRetriever"]


class EmbedkitRetriever(BaseRetriever):
    """Chunks of an embedkit collection nearest to a query, as LangChain Documents.

    The collection is the one `embedkit.ingest` / `embedkit ingest` wrote: give its name and where it
    lives (`path` for the embedded store, `url` (+ `qdrant_api_key`) for a server, or a `client`).
    Queries are embedded with the query task by `embeddings`; when none is given, the model the
    collection records is loaded, so the query vector is comparable with the stored ones.

    Each Document carries the chunk's text as `page_content`, the chunk's point id as `id`, and as
    `metadata` its document's metadata exactly as it was ingested (what langchain-qdrant's
    QdrantVectorStore reads from the same collection), plus one reserved key, `embedkit_key`
    ("embedkit" by default), holding embedkit's own fields:

        doc.metadata["embedkit"] == {"score": 0.83, "doc_id": "docs/a.md", "source": "docs",
            "chunk_index": 0, "chunk_count": 3, "start": 0, "end": 412, "headings": ["Guide", "Install"]}

    (`start`/`end`: the chunk's character span in its source; `headings`: its section path). A collection
    ingested with sparse vectors (`embedkit ingest --sparse bm25`) is searched hybrid by default: dense and
    sparse results fused in Qdrant (`mode`, `fetch_k`, `fusion`). With a `reranker`, the `fetch_k`
    candidates are reordered by it and `score` is the reranker's (`retrieval_score` the search's). A user's
    `score`, `doc_id`, `start` ... keys are never overwritten; a document whose metadata already uses the
    reserved key is an InputError asking for another `embedkit_key`, never a silent merge. `k`,
    `score_threshold` and `filter` (metadata key -> value, or a list of accepted values) may also be
    given per call: `retriever.invoke(query, k=3, filter={"lang": "en"})`.

    Example:
        ```python
        from langchain_embedkit import EmbedkitRetriever

        with EmbedkitRetriever(collection="kb", path="./qdrant", k=4) as retriever:
            docs = retriever.invoke("how do I reset my password")
        ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    collection: str
    path: str | None = None
    url: str | None = None
    qdrant_api_key: SecretStr | None = Field(default_factory=secret_from_env("QDRANT_API_KEY", default=None))
    client: Any = Field(default=None, exclude=True)
    """A qdrant_client.QdrantClient to use instead of path / url."""
    engine: str | None = None
    """For `path`: "edge" (Qdrant Edge, what embedkit writes) or "client-local" (qdrant-client's local mode);
    None opens the folder as whichever it holds."""
    embeddings: EmbedkitEmbeddings | None = None
    k: int = 4
    score_threshold: float | None = None
    filter: dict[str, Any] | None = None
    embedkit_key: str = "embedkit"
    """The metadata key that holds embedkit's fields (score, doc_id, source, span, headings)."""
    mode: Literal["dense", "sparse", "hybrid"] | None = None
    """Dense vectors, sparse vectors, or both fused; default: hybrid when the collection has sparse vectors."""
    fetch_k: int | None = None
    """Candidates the search keeps before fusion (hybrid) and before reranking (default max(4k, 20))."""
    reranker: Any = Field(default=None, exclude=True)
    """Reorders the `fetch_k` candidates before the `k` best are kept: an embedkit Reranker
    (`embedkit.load_reranker(...)`), a TEIClient of a reranking server, or a model folder / hub id to load."""
    fusion: Literal["rrf", "dbsf"] = "rrf"
    sparse_encoder: Any = Field(default=None, exclude=True)
    """The SparseEncoder for queries; default: the one the collection records (BM25's parameters, the SPLADE model)."""
    vector_names: Literal["embedkit", "langchain", "llamaindex"] = "embedkit"
    """How the collection names its dense and sparse vectors (embedkit.sinks.qdrant.VECTOR_NAME_PRESETS)."""

    _sink: QdrantSink = PrivateAttr()

    @model_validator(mode="after")
    def _open(self) -> EmbedkitRetriever:
        if isinstance(self.k, bool) or self.k < 1:
            raise InputError(f"k must be an int >= 1, got {self.k!r}")
        if not self.embedkit_key:
            raise InputError("embedkit_key must be a non-empty metadata key")
        key = self.qdrant_api_key.get_secret_value() if self.qdrant_api_key is not None and self.url else None
        location = None if (self.path or self.url or self.client) else ":memory:"
        self._sink = QdrantSink(
            self.collection,
            path=self.path,
            url=self.url,
            api_key=key,
            client=self.client,
            location=location,
            engine=self.engine,
            vector_name=VECTOR_NAME_PRESETS[self.vector_names][0],
            sparse_vector_name=VECTOR_NAME_PRESETS[self.vector_names][1],
        )
        if self.mode is None:
            hybrid = self._sink.exists() and self._sink.sparse_vector_name in self._sink.sparse_vectors()
            self.mode = "hybrid" if hybrid else "dense"
        if self.mode != "dense" and self.sparse_encoder is None:
            self.sparse_encoder = encoder_for_collection(self._sink)
        if isinstance(self.reranker, str):
            from embedkit import load_reranker

            self.reranker = load_reranker(self.reranker)
        where = self.path or self.url or "the given client"
        self.embeddings = embeddings_for_collection(self._sink, where, self.embeddings)
        return self

    def close(self) -> None:
        """Close the Qdrant client this retriever opened (a `client` given to it stays open); a local
        path's client is shared in the process, so this closes it for every user of that path there."""
        self._sink.close()

    def __enter__(self) -> EmbedkitRetriever:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _search(
        self, query: str, vector: list[float] | None, k: int | None, score_threshold: float | None, filter: Any
    ) -> list[Document]:
        sparse_vector = self.sparse_encoder.embed_query(query) if self.mode != "dense" else None
        hits = self._sink.search(
            vector if self.mode != "sparse" else None,
            self.k if k is None else k,
            sparse_vector=sparse_vector,
            mode=self.mode,
            fetch_k=self.fetch_k,
            fusion=self.fusion,
            metadata_filter=self.filter if filter is None else filter,
            score_threshold=self.score_threshold if score_threshold is None else score_threshold,
            reranker=self.reranker,
            query_text=query if self.reranker is not None else None,
        )
        return [_document(hit, self.embedkit_key) for hit in hits]

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        score_threshold: float | None = None,
        filter: dict[str, Any] | None = None,
    ) -> list[Document]:
        assert self.embeddings is not None  # set by _open
        vector = self.embeddings.embed_query(query) if self.mode != "sparse" else None
        return self._search(query, vector, k, score_threshold, filter)

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        score_threshold: float | None = None,
        filter: dict[str, Any] | None = None,
    ) -> list[Document]:
        assert self.embeddings is not None
        vector = await self.embeddings.aembed_query(query) if self.mode != "sparse" else None
        # the embedded store (and the sparse encoder) are synchronous: a worker thread, not the event loop
        return await asyncio.to_thread(self._search, query, vector, k, score_threshold, filter)


def _document(hit: SearchHit, key: str) -> Document:
    """The hit as a Document: the user's metadata as stored, embedkit's fields under `key` alone."""
    payload = hit.payload
    stored = payload.get(METADATA)
    metadata = dict(stored) if isinstance(stored, dict) else {}
    if key in metadata:
        raise InputError(
            f"document {payload.get(DOC_ID)!r} has its own metadata key {key!r}, where this retriever puts "
            f"embedkit's fields; choose another: EmbedkitRetriever(..., embedkit_key='_{key}')"
        )
    fields = (
        {"score": hit.score}
        if hit.retrieval_score is None
        else {"score": hit.score, "retrieval_score": hit.retrieval_score}
    )
    metadata[key] = {**fields, **chunk_fields(payload)}
    return Document(id=hit.id, page_content=str(payload.get(PAGE_CONTENT, "")), metadata=metadata)
