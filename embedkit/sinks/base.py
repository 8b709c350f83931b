"""The primitives the ingest pipeline needs from a vector store.

The pipeline builds crash safety out of these (see embedkit.ingest): upsert a document's chunks
with no content hash, delete its surplus chunks, then mark it complete by setting the hash.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
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
        """The probe texts and vectors recorded at creation (embedkit.ingest decides with them), if any."""

    def complete_counts(self, hashes: Mapping[str, str]) -> dict[str, int]:
        """For each doc id, how many of its points carry the given content hash (one query for many docs)."""

    def upsert(self, points: Sequence[Point]) -> None: ...

    def delete_surplus(self, doc_id: str, keep: int) -> int:
        """Delete `doc_id`'s points with chunk_index >= keep; returns how many there were."""

    def mark_complete(self, doc_id: str, content_hash: str) -> None:
        """Set `content_hash` on every point of `doc_id`."""

    def delete_missing(self, sources: Collection[str], keep: Callable[[str], bool]) -> tuple[int, int]:
        """Delete the docs of `sources` for which `keep(doc_id)` is false, never points without embedkit's
        fields; returns (docs, points) removed."""

    def search(self, vector: Sequence[float], k: int) -> list[SearchHit]: ...
