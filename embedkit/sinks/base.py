"""What embedkit needs from a vector store: the ingest drivers, the CLI and the LangChain retriever call
nothing on a sink but these.

The drivers build crash safety out of them (see embedkit.ingestion.records): upsert a document's chunks
with no content hash, delete its surplus chunks, then mark it complete by setting the hash. The payload's
field names (doc_id, source, chunk_index, chunk_count, content_hash, ...) are embedkit.ingestion.records'.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from embedkit.sparse.base import SparseVector

__all__ = ["HybridSink", "Point", "SearchHit", "Sink", "SparseConfig"]


@dataclass(frozen=True)
class Point:
    id: str
    vector: Sequence[float]
    payload: dict[str, Any]
    sparse: SparseVector | None = None  # stored beside the dense vector when the collection has a sparse one
    # [n, D] late-interaction rows (bge-m3's ColBERT vectors), when the collection has a multivector
    multivector: Sequence[Sequence[float]] | None = None


@dataclass(frozen=True)
class SparseConfig:
    modifier: str | None = None  # "idf": Qdrant weighs each index by its inverse document frequency (BM25)


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float  # the reranker's score when the search was reranked, else the vector search's
    payload: dict[str, Any]
    retrieval_score: float | None = None  # a reranked hit's score from the vector search before reranking


class Sink(Protocol):
    collection: str  # the collection's name, for messages

    def exists(self) -> bool:
        """Whether the collection exists."""

    def count(self) -> int:
        """How many points the collection holds."""

    def close(self) -> None:
        """Release the store's client if the sink opened it; calling it again does nothing."""

    def prepare(
        self,
        dimension: int,
        fingerprint: dict[str, Any],
        *,
        probes: dict[str, Any] | None = None,
        rewrite: bool = False,
    ) -> None:
        """Create the collection recording `fingerprint` and `probes`, or check that an existing one holds
        `dimension`-d vectors; `rewrite` records them over an existing collection's."""

    def recorded_fingerprint(self) -> dict[str, Any] | None:
        """The embedder fingerprint the collection was written with, if it exists."""

    def recorded_probes(self) -> dict[str, Any] | None:
        """The probe texts and vectors recorded at creation (embedkit.ingestion.records decides with them), if any."""

    def hashed_points(self, doc_ids: Collection[str] | None = None) -> Iterable[tuple[str, str, int]]:
        """(doc_id, content_hash, chunk_count) of every point that carries a content hash, of the docs
        `doc_ids` only when given (one query for many docs). embedkit.ingestion.records.Complete folds these
        into the documents stored complete."""

    def upsert(self, points: Sequence[Point]) -> None: ...

    def delete_surplus(self, doc_id: str, keep: int) -> int:
        """Delete `doc_id`'s points with chunk_index >= keep; returns how many there were."""

    def mark_complete(self, doc_id: str, content_hash: str) -> None:
        """Set `content_hash` on every point of `doc_id`."""

    def delete_missing(self, sources: Collection[str], keep: Callable[[str], bool]) -> tuple[int, int]:
        """Delete the docs of `sources` for which `keep(doc_id)` is false, never points without embedkit's
        fields; returns (docs, points) removed."""

    def optimize(self) -> bool:
        """Build the search index now where the store waits to be asked (Qdrant Edge builds HNSW only then);
        True if anything was done. The ingest drivers call it once a run has written."""

    def search(
        self,
        vector: Sequence[float],
        k: int,
        *,
        metadata_filter: Mapping[str, Any] | None = None,
        score_threshold: float | None = None,
    ) -> list[SearchHit]:
        """The `k` nearest chunks, best first, of those matching `metadata_filter` (key -> value or list of
        accepted values) and scoring at least `score_threshold`."""


@runtime_checkable
class HybridSink(Sink, Protocol):
    """A sink that also stores a sparse vector per point (what `ingest(..., sparse=...)` needs); QdrantSink is one.
    The sparse vectors of existing points are recomputed from their `page_content`, so adding them to a
    collection never re-embeds the dense ones."""

    def add_sparse_vector(self, config: SparseConfig) -> bool:
        """Give the collection its sparse vector if it has none (True if added)."""

    def sparse_encoder(self) -> dict[str, Any] | None:
        """The fingerprint of the encoder the stored sparse vectors were made with, if any."""

    def record_sparse_encoder(self, fingerprint: dict[str, Any]) -> None: ...

    def clear_sparse(self) -> None:
        """Remove every point's sparse vector (before recomputing them all with another encoder)."""

    def fill_sparse(self, encode: Callable[[list[str]], list[Any]], *, page_size: int = 256) -> int:
        """Compute the sparse vector of every point that has none; returns how many."""
