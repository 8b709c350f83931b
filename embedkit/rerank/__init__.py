"""Rerankers: a query and candidate documents in, relevance scores out (the contract is in `base`).

`load_reranker` reads what a folder holds and builds the matching `Reranker`: a cross-encoder for a
sequence-classification checkpoint (BERT, XLM-RoBERTa, GTE; `cross_encoder`). Heavy modules (torch) load
on the first call, so importing this package stays cheap.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from embedkit.rerank.base import Reranker, RerankResult, order_results

if TYPE_CHECKING:
    import torch

__all__ = ["RerankResult", "Reranker", "load_reranker", "order_results"]


def load_reranker(
    model: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    backend: str | None = None,
    quantize: str | None = None,
    batch_tokens: int | None = None,
    max_length: int | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    onnx_cache_dir: str | os.PathLike[str] | None = None,
) -> Reranker:
    """A reranker from a folder or hub id, on embedkit's own models.

    Cross-encoders: sequence-classification checkpoints of the BERT (ms-marco-MiniLM), XLM-RoBERTa
    (bge-reranker-v2-m3) and GTE (gte-multilingual-reranker-base) kinds, as sentence-transformers'
    CrossEncoder saves them; the scores are sentence-transformers' (the activation the model records).

    `device` defaults to CUDA when available, `dtype` to float32. `backend` as in `embedkit.load`: "torch",
    "onnx" (ONNX Runtime, float32 on the CPU, the graph exported once and cached under `onnx_cache_dir`)
    or "auto" (the default, or $EMBEDKIT_BACKEND: ONNX Runtime where it can run, else torch);
    `quantize="int8"` runs dynamic int8 weights on ONNX Runtime. `batch_tokens` is the padded-token budget
    of one forward pass; `max_length` cuts pairs shorter than the model's limit (the document side only).

    ModelLoadError, naming the folder, for an embedding model (use `embedkit.load`), an architecture
    embedkit does not implement, or a missing or unreadable file; InputError for a bad argument.
    """
    from embedkit.rerank.cross_encoder import load_cross_encoder

    return load_cross_encoder(
        model,
        device=device,
        dtype=dtype,
        backend=backend,
        quantize=quantize,
        batch_tokens=batch_tokens,
        max_length=max_length,
        revision=revision,
        cache_dir=cache_dir,
        onnx_cache_dir=onnx_cache_dir,
    )
