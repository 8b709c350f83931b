"""Sparse encoders (BM25, SPLADE) for hybrid search: `embedkit.sparse.base` holds the vector and the protocol."""

from embedkit.sparse.base import SparseEncoder, SparseVector
from embedkit.sparse.bm25 import BM25Encoder
from embedkit.sparse.collection import encoder_for_collection

__all__ = ["BM25Encoder", "SparseEncoder", "SparseVector", "encoder_for_collection"]
