"""EmbedkitRerank: LangChain's BaseDocumentCompressor over an embedkit reranker, local or served."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import Document
from langchain_core.documents.compressor import BaseDocumentCompressor
from langchain_core.utils import secret_from_env
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from embedkit import AsyncTEIClient, InputError, TEIClient

__all__ = ["EmbedkitRerank"]


class EmbedkitRerank(BaseDocumentCompressor):
    """Reorders retrieved Documents by a reranker and keeps the `top_n` best, as CohereRerank does.

    The reranker is one of: `model` (a cross-encoder or Qwen3-Reranker folder or hub id, loaded in this
    process by `embedkit.load_reranker`), `url` (a server answering TEI's /rerank: TEI or `embedkit serve`;
    the API key from `api_key` or EMBEDKIT_API_KEY), or `reranker` (an embedkit Reranker or TEIClient made
    by the caller). Each Document that comes back is the input one with `metadata["relevance_score"]` set to
    the reranker's score; the others are dropped. With ContextualCompressionRetriever:

        ```python
        from langchain_classic.retrievers import ContextualCompressionRetriever
        from langchain_embedkit import EmbedkitRerank, EmbedkitRetriever

        retriever = ContextualCompressionRetriever(
            base_compressor=EmbedkitRerank(model="BAAI/bge-reranker-v2-m3", top_n=4),
            base_retriever=EmbedkitRetriever(collection="kb", path="./qdrant", k=20),
        )
        ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: str | None = None
    url: str | None = None
    api_key: SecretStr | None = Field(default_factory=secret_from_env("EMBEDKIT_API_KEY", default=None))
    """Bearer key for `url`; defaults to the EMBEDKIT_API_KEY environment variable."""
    reranker: Any = Field(default=None, exclude=True)
    top_n: int | None = 3
    """How many Documents to keep (None: all of them, reordered)."""

    _async: AsyncTEIClient | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _build(self) -> EmbedkitRerank:
        given = [name for name in ("model", "url", "reranker") if getattr(self, name) is not None]
        if len(given) != 1:
            raise InputError(f"EmbedkitRerank takes one of model, url or reranker; got {', '.join(given) or 'none'}")
        if self.top_n is not None and (isinstance(self.top_n, bool) or self.top_n < 1):
            raise InputError(f"top_n must be an int >= 1 or None, got {self.top_n!r}")
        if self.model is not None:
            from embedkit import load_reranker

            self.reranker = load_reranker(self.model)
        elif self.url is not None:
            key = self.api_key.get_secret_value() if self.api_key is not None else None
            self.reranker = TEIClient(self.url, api_key=key)
        elif isinstance(self.reranker, AsyncTEIClient):
            self._async, self.reranker = self.reranker, TEIClient.from_client(self.reranker)
        if not callable(getattr(self.reranker, "rerank", None)):
            raise InputError(
                "reranker must be an embedkit Reranker (embedkit.load_reranker(...)) or a TEIClient, "
                f"got {type(self.reranker).__name__}"
            )
        return self

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The `top_n` Documents most relevant to `query`, best first, each with `relevance_score`."""
        if not documents:
            return []
        results = self.reranker.rerank(query, [doc.page_content for doc in documents], top_k=self.top_n)
        return [_scored(documents[r.index], r.score) for r in results]

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """As `compress_documents`; a served reranker is called with the async client, a local one in a thread."""
        if not documents or not isinstance(self.reranker, TEIClient):
            return await super().acompress_documents(documents, query, callbacks)
        if self._async is None:
            self._async = AsyncTEIClient.from_client(self.reranker)
        results = await self._async.rerank(query, [doc.page_content for doc in documents], top_k=self.top_n)
        return [_scored(documents[r.index], r.score) for r in results]


def _scored(document: Document, score: float) -> Document:
    return Document(
        id=document.id, page_content=document.page_content, metadata={**document.metadata, "relevance_score": score}
    )
