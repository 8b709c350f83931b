"""The sparse encoder a collection's sparse vectors were made with, rebuilt from its recorded fingerprint, so a
query's sparse vector is comparable with the stored ones (as the dense model is found from its fingerprint)."""

from __future__ import annotations

from typing import Any

from embedkit.errors import StoreError
from embedkit.sparse.base import SparseEncoder

__all__ = ["encoder_for_collection"]


def encoder_for_collection(sink: Any) -> SparseEncoder:
    """The SparseEncoder `sink`'s collection records (BM25 with its parameters, the SPLADE or bge-m3 model).

    Raises StoreError when the collection records none (it has no sparse vectors, or another tool wrote them:
    pass the encoder yourself then), and what loading the encoder raises (ModelLoadError, ...).
    """
    recorded = sink.sparse_encoder()
    kind = recorded.get("kind") if isinstance(recorded, dict) else None
    if kind == "bm25":
        from embedkit.sparse.bm25 import BM25Encoder

        return BM25Encoder(**{key: recorded[key] for key in ("k", "b", "avg_len", "language") if key in recorded})
    if kind == "splade" and recorded.get("name"):
        from embedkit.sparse import load_sparse

        return load_sparse(recorded["name"], max_active_dims=recorded.get("max_active_dims"))
    if kind == "bge-m3-sparse" and recorded.get("name"):
        from embedkit.sparse import load_sparse

        return load_sparse(recorded["name"], task=recorded.get("task"))
    raise StoreError(
        f"collection {sink.collection!r} records no sparse encoder embedkit can rebuild ({recorded!r}): it has no "
        "sparse vectors of embedkit's; ingest with --sparse bm25, or give the sparse encoder to use for queries"
    )
