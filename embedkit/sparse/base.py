"""Sparse vectors beside the dense ones: what a sparse encoder gives and what the sinks store.

A sparse vector is a bag of (vocabulary index, weight) pairs; Qdrant stores it as a named sparse vector and
scores a query against it by the dot product over shared indices. BM25 keeps only term frequencies in the
vector (the inverse document frequency is applied by Qdrant at search time: the collection's sparse vector
needs `Modifier.IDF`), SPLADE's weights are complete as the model gives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["SparseEncoder", "SparseVector"]


@dataclass(frozen=True)
class SparseVector:
    """`indices` (unique, ascending, within uint32) and their `values` (float weights, same length).
    An empty vector (no indices) is valid: a text with no terms left after stopwords, say."""

    indices: list[int]
    values: list[float]

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.indices, self.values, strict=True))


@runtime_checkable
class SparseEncoder(Protocol):
    """Texts to sparse vectors, for documents (stored) and queries (searched)."""

    @property
    def name(self) -> str:
        """What the encoder is called: "bm25", or the SPLADE model's id."""

    @property
    def modifier(self) -> str | None:
        """The modifier the collection's sparse vector needs: "idf" for BM25 (Qdrant weighs by IDF), else None."""

    def embed_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        """One sparse vector per text, as stored."""

    def embed_query(self, text: str) -> SparseVector:
        """The sparse vector a search sends for `text`."""

    def fingerprint(self) -> dict[str, Any]:
        """What decides the vectors (name, parameters, weights digest): recorded in the collection."""
