"""Sparse encoders (BM25, SPLADE) for hybrid search: `embedkit.sparse.base` holds the vector and the protocol.

`load_sparse(name_or_path)` gives the encoder a name stands for: "bm25" (Qdrant's BM25, `sparse/bm25.py`)
or a SPLADE model's folder or hub id (`sparse/splade.py`).
"""

from __future__ import annotations

import os
from typing import Any

from embedkit.sparse.base import SparseEncoder, SparseVector
from embedkit.sparse.bm25 import BM25Encoder
from embedkit.sparse.collection import encoder_for_collection

__all__ = ["BM25Encoder", "SparseEncoder", "SparseVector", "encoder_for_collection", "load_sparse"]


def load_sparse(name_or_path: str | os.PathLike[str], **options: Any) -> SparseEncoder:
    """The sparse encoder `name_or_path` names: "bm25", or a SPLADE model (sentence-transformers'
    SparseEncoder folder or hub id; `options` as `embedkit.sparse.splade.load_splade` takes them).

    ModelLoadError naming the path and the reason when it cannot be loaded.
    """
    if str(name_or_path).lower() == "bm25":
        encoder: SparseEncoder = BM25Encoder(**options)
        return encoder
    from embedkit.sparse.splade import load_splade  # imports torch: only when a model is asked for

    return load_splade(name_or_path, **options)
