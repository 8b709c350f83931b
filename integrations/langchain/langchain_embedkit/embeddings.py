"""EmbedkitEmbeddings: LangChain's Embeddings over any embedkit embedder, local or remote."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.utils import secret_from_env
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from embedkit import AsyncTEIClient, InputError, StoreError, TEIClient
from embedkit.remote import ClientSettings

__all__ = ["EmbedkitEmbeddings", "embeddings_for_collection"]


class EmbedkitEmbeddings(BaseModel, Embeddings):
    """embedkit embeddings for LangChain: a local model or a TEI / `embedkit serve` server.

    Give exactly one of `embedder` (any embedkit embedder), `model` (a local directory or hub id;
    `embedkit.load`), or `tei_url` (a TEI-compatible server; the API key from `api_key` or
    EMBEDKIT_API_KEY). With none, the default model is loaded.

    `embed_query` uses `query_task` and `embed_documents` `document_task`, so the model's query prompt
    (or jina-embeddings-v3's query adapter) applies exactly as embedkit applies it everywhere else.

    Over a TEIClient the async methods are native: they use its async twin (`AsyncTEIClient.from_client`),
    which carries every setting of the client (API key, api, model, prompts, timeout, batch size,
    concurrency, retry policy), so they give what the sync methods give. An AsyncTEIClient may be given
    too; the sync methods then use its sync twin. Building the object sends no request.

    Example:
        ```python
        from langchain_embedkit import EmbedkitEmbeddings

        embeddings = EmbedkitEmbeddings(tei_url="http://127.0.0.1:8080")
        vector = embeddings.embed_query("what is x?")
        ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())

    embedder: Any = Field(default=None, exclude=True)
    """An embedkit embedder (embedkit.load(...), embedkit.TEIClient(...)) to wrap as it is."""
    model: str | None = None
    """A local model directory or hub id, loaded with embedkit.load."""
    tei_url: str | None = None
    """Base URL of a TEI-compatible server (TEI, embedkit serve)."""
    api_key: SecretStr | None = Field(default_factory=secret_from_env("EMBEDKIT_API_KEY", default=None))
    """Bearer key for `tei_url`; defaults to the EMBEDKIT_API_KEY environment variable."""
    device: str | None = None
    """Device for a local `model` (cpu, cuda, ...); embedkit picks one when unset."""
    query_task: str | None = "query"
    document_task: str | None = "document"
    dimensions: int | None = None
    """Matryoshka: keep the first `dimensions` values (then normalise)."""
    normalize: bool = True
    max_concurrency: int = 4
    """Batches in flight at once against `tei_url`."""

    _sync: Any = PrivateAttr(default=None)  # what the sync methods call: the embedder, or an async one's twin
    _async: AsyncTEIClient | None = PrivateAttr(default=None)  # the remote client's async twin, made on first use
    _async_of: ClientSettings | None = PrivateAttr(default=None)  # the settings that twin was made from

    @model_validator(mode="after")
    def _build_embedder(self) -> EmbedkitEmbeddings:
        given = [name for name in ("embedder", "model", "tei_url") if getattr(self, name) is not None]
        if len(given) > 1:
            raise InputError(f"EmbedkitEmbeddings takes one of embedder, model or tei_url; got {', '.join(given)}")
        if self.embedder is not None:
            # by the type's methods, not isinstance(embedder, Embedder): checking that runtime Protocol reads
            # its properties, and a TEIClient's `dimension` or `model_id` would ask the server right here
            if not callable(getattr(type(self.embedder), "embed", None)):
                raise InputError(
                    f"embedder must be an embedkit embedder (embedkit.load(...), TEIClient(...)), "
                    f"got {type(self.embedder).__name__}"
                )
            if isinstance(self.embedder, AsyncTEIClient):
                self._sync, self._async = TEIClient.from_client(self.embedder), self.embedder
            else:
                self._sync = self.embedder
        elif self.tei_url is not None:
            self.embedder = TEIClient(self.tei_url, api_key=self._key(), max_concurrency=self.max_concurrency)
            self._sync = self.embedder
        else:
            import embedkit

            self.embedder = embedkit.load(self.model, device=self.device)
            self._sync = self.embedder
        return self

    def _key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None

    # -- sync ------------------------------------------------------------------------------------

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed passages with the document task; an empty list gives an empty list."""
        if not texts:
            return []
        vectors = self._sync.embed(texts, task=self.document_task, dimensions=self.dimensions, normalize=self.normalize)
        return _as_lists(vectors)

    def embed_query(self, text: str) -> list[float]:
        """Embed one search query with the query task."""
        vectors = self._sync.embed([text], task=self.query_task, dimensions=self.dimensions, normalize=self.normalize)
        return _as_lists(vectors)[0]

    # -- async: native over HTTP, a worker thread for local models --------------------------------

    def _remote_async(self) -> AsyncTEIClient | None:
        """The async twin of the remote client, with all of its settings; None for a local model.

        Kept across calls (an AsyncTEIClient serves any event loop, so LangChain may call from a new loop
        each time) and made again if the TEIClient's settings were changed since."""
        if isinstance(self.embedder, AsyncTEIClient):
            return self.embedder
        if not isinstance(self.embedder, TEIClient):
            return None
        settings = self.embedder.settings  # frozen: a change on the client is a new object
        if self._async is None or self._async_of != settings:
            self._async, self._async_of = AsyncTEIClient.from_client(self.embedder), settings
        return self._async

    async def _aembed(self, texts: list[str], task: str | None) -> list[list[float]] | None:
        client = self._remote_async()
        if client is None:
            return None
        vectors = await client.embed(texts, task=task, dimensions=self.dimensions, normalize=self.normalize)
        return _as_lists(vectors)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        remote = await self._aembed(texts, self.document_task)
        return remote if remote is not None else await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        remote = await self._aembed([text], self.query_task)
        return remote[0] if remote is not None else await asyncio.to_thread(self.embed_query, text)


def _as_lists(vectors: np.ndarray) -> list[list[float]]:
    return vectors.astype(np.float64).tolist()  # Python floats, as LangChain expects


def embeddings_for_collection(sink: Any, where: str, embeddings: EmbedkitEmbeddings | None) -> EmbedkitEmbeddings:
    """`embeddings`, or the model an embedkit collection records (so query vectors compare with its own);
    StoreError when the collection does not exist or was not written by embedkit."""
    recorded = sink.recorded_fingerprint()
    if recorded is None:
        raise StoreError(
            f"collection {sink.collection!r} at {where} does not exist or was not written by embedkit; "
            "ingest into it first (embedkit ingest ... --collection NAME)"
        )
    if embeddings is not None:
        return embeddings
    return EmbedkitEmbeddings(model=recorded.get("model_id"), dimensions=recorded.get("dimensions"))
