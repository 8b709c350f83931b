"""Sparse encoders (BM25, SPLADE) for hybrid search: `embedkit.sparse.base` holds the vector and the protocol."""

from embedkit.sparse.base import SparseEncoder, SparseVector
from embedkit.sparse.collection import encoder_for_collection

__all__ = ["SparseEncoder", "SparseVector", "encoder_for_collection"]
