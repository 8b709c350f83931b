"""A langchain-qdrant QdrantVectorStore over an embedkit collection, for the full VectorStore API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedkit import MissingDependencyError, StoreError
from embedkit.sinks.client import ClientSink
from embedkit.sinks.edge import store_kind
from langchain_embedkit.embeddings import EmbedkitEmbeddings, embeddings_for_collection

if TYPE_CHECKING:
    from langchain_qdrant import QdrantVectorStore

__all__ = ["qdrant_vector_store"]


def qdrant_vector_store(
    collection: str,
    *,
    path: str | None = None,
    url: str | None = None,
    api_key: str | None = None,
    client: Any = None,
    embeddings: EmbedkitEmbeddings | None = None,
) -> QdrantVectorStore:
    """langchain-qdrant's QdrantVectorStore reading (and writing) an embedkit collection as it is.

    embedkit stores `page_content` and `metadata` payload keys and one unnamed cosine vector, which is
    what QdrantVectorStore reads by default. Without `embeddings`, the model the collection records
    is loaded. Needs `pip install langchain-embedkit[qdrant]`.

    langchain-qdrant opens a Qdrant server (`url`, `client`) or a qdrant-client local-mode folder (`path`);
    it cannot open embedkit's embedded Qdrant Edge store, for which this raises StoreError naming the
    command that copies the collection where langchain-qdrant can read it (`embedkit collections push`).
    """
    try:
        from langchain_qdrant import QdrantVectorStore, RetrievalMode
    except ImportError as error:
        raise MissingDependencyError(
            "qdrant_vector_store needs langchain-qdrant: pip install 'langchain-embedkit[qdrant]'"
        ) from error
    if path is not None and store_kind(path) == "edge":
        raise StoreError(
            f"{path} is embedkit's embedded Qdrant Edge store, which langchain-qdrant cannot open (it reads a "
            "Qdrant server or a qdrant-client local-mode folder): search it with EmbedkitRetriever, or copy the "
            f"collection with `embedkit collections push {collection} --qdrant-path {path} --to-path FOLDER` "
            "(a local-mode folder) or `--to-url URL` (a server)"
        )
    sink = ClientSink(collection, path=path, url=url, api_key=api_key, client=client)  # local mode for a path
    embeddings = embeddings_for_collection(sink, str(path or url or "the given client"), embeddings)
    return QdrantVectorStore(
        client=sink.client,  # a local path is opened once per process: share embedkit's client
        collection_name=collection,
        embedding=embeddings,
        retrieval_mode=RetrievalMode.DENSE,
        content_payload_key="page_content",
        metadata_payload_key="metadata",
        vector_name="",
    )
