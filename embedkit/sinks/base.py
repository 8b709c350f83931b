"""The primitives the ingest pipeline needs from a vector store.

The pipeline builds crash safety out of these (see embedkit.ingest): upsert a document's chunks
with no content hash, delete its surplus chunks, then mark it complete by setting the hash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Point", "Sink", "SearchHit"]


@dataclass(frozen=True)
class Point:
    id: str
    vector: Sequence[float]
    payload: dict[str, Any]


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    payload: dict[str, Any]


class Sink(Protocol):
    def prepare(self, dimension: int, fingerprint: dict[str, Any], *, reembed: bool = False) -> None:
        """Create the collection, or check that an existing one matches `dimension` and `fingerprint`."""

    def recorded_fingerprint(self) -> dict[str, Any] | None:
        """The embedder fingerprint the collection was written with, if it exists."""

    def complete_counts(self, hashes: Mapping[str, str]) -> dict[str, int]:
        """For each doc id, how many of its points carry the given content hash (one query for many docs)."""

    def upsert(self, points: Sequence[Point]) -> None: ...

    def delete_surplus(self, doc_id: str, keep: int) -> int:
        """Delete `doc_id`'s points with chunk_index >= keep; returns how many there were."""

    def mark_complete(self, doc_id: str, content_hash: str) -> None:
        """Set `content_hash` on every point of `doc_id`."""

    def delete_docs_except(self, keep: set[str]) -> tuple[int, int]:
        """Delete every doc whose id is not in `keep`; returns (docs, points) removed."""

    def search(self, vector: Sequence[float], k: int) -> list[SearchHit]: ...
