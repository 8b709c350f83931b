"""embedkit: text -> vectors -> a searchable Qdrant collection, locally or through TEI.

Heavy parts (torch, transformers) load on first use, so `import embedkit` and `embedkit.errors`
stay cheap for clients, the CLI and the LangChain integration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedkit.chunking import Chunk, Chunker, embed_chunks
from embedkit.errors import (
    AuthError,
    EmbedkitError,
    InputError,
    MissingDependencyError,
    ModelLoadError,
    ModelNotFoundError,
    RemoteError,
    StoreError,
    UnknownTaskError,
)

# `embedkit.ingest` is the function; the package it lives in is `embedkit.ingestion` (no module shadows it)
from embedkit.ingestion import Document, ingest

if TYPE_CHECKING:
    from embedkit.embedder import Embedder
    from embedkit.local import LocalEmbedder, load
    from embedkit.remote import AsyncTEIClient, TEIClient
    from embedkit.rerank import load_reranker

__version__ = "0.1.0"

__all__ = [
    "AsyncTEIClient",
    "AuthError",
    "Chunk",
    "Chunker",
    "Document",
    "Embedder",
    "EmbedkitError",
    "InputError",
    "LocalEmbedder",
    "MissingDependencyError",
    "ModelLoadError",
    "ModelNotFoundError",
    "RemoteError",
    "StoreError",
    "TEIClient",
    "UnknownTaskError",
    "embed_chunks",
    "ingest",
    "load",
    "load_reranker",
]

_LAZY = {
    "AsyncTEIClient": "embedkit.remote",
    "Embedder": "embedkit.embedder",
    "LocalEmbedder": "embedkit.local.embedder",
    "TEIClient": "embedkit.remote",
    "load": "embedkit.local.loader",
    "load_reranker": "embedkit.rerank",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'embedkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
