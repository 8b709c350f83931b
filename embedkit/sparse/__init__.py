"""Sparse encoders (BM25, SPLADE) for hybrid search: `embedkit.sparse.base` holds the vector and the protocol."""

from embedkit.sparse.base import SparseEncoder, SparseVector

__all__ = ["SparseEncoder", "SparseVector"]
