"""Sparse encoders (BM25, SPLADE, bge-m3's lexical weights) for hybrid search: `embedkit.sparse.base` holds the
vector and the protocol.

`load_sparse(name_or_path)` gives the encoder a name stands for: "bm25" (Qdrant's BM25, `sparse/bm25.py`),
a SPLADE model's folder or hub id (`sparse/splade.py`), or a bge-m3 folder or hub id, one with
`sparse_linear.pt` beside an encoder's weights (`sparse/bge_m3.py`).
"""

from __future__ import annotations

import os
from typing import Any

from embedkit.sparse.base import SparseEncoder, SparseVector
from embedkit.sparse.bm25 import BM25Encoder
from embedkit.sparse.collection import encoder_for_collection

__all__ = ["BM25Encoder", "SparseEncoder", "SparseVector", "encoder_for_collection", "load_sparse"]


def load_sparse(name_or_path: str | os.PathLike[str], **options: Any) -> SparseEncoder:
    """The sparse encoder `name_or_path` names: "bm25", a SPLADE model (sentence-transformers' SparseEncoder
    folder or hub id; `options` as `embedkit.sparse.splade.load_splade` takes them), or a bge-m3 model (a
    folder with `sparse_linear.pt` and no SPLADE modules; `options` as `embedkit.load` takes them).

    ModelLoadError naming the path and the reason when it cannot be loaded.
    """
    if str(name_or_path).lower() == "bm25":
        encoder: SparseEncoder = BM25Encoder(**options)
        return encoder
    from embedkit.hub import resolve_model_dir  # the imports below load torch: only when a model is asked for
    from embedkit.sparse.bge_m3 import is_m3_dir, load_m3_sparse
    from embedkit.sparse.splade import is_sparse_model_dir, load_splade

    hub_options = {key: options[key] for key in ("revision", "cache_dir") if key in options}
    model_dir, _ = resolve_model_dir(name_or_path, require_config=False, **hub_options)
    if is_m3_dir(model_dir) and not is_sparse_model_dir(model_dir):
        return load_m3_sparse(name_or_path, **options)
    return load_splade(name_or_path, **options)
