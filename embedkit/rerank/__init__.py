"""Rerankers: a query and candidate documents in, relevance scores out (the contract is in `base`).

`load_reranker` reads what a folder holds and builds the matching `Reranker`: a cross-encoder for a
sequence-classification checkpoint (BERT, XLM-RoBERTa, GTE; `cross_encoder`), an LLM reranker for a
Qwen3ForCausalLM checkpoint with its LM head (Qwen3-Reranker; `qwen3`). Heavy modules (torch) load
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
    instruction: str | None = None,
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

    LLM rerankers: Qwen3-Reranker (config.json names Qwen3ForCausalLM and the weights hold the decoder under
    `model.` with its LM head), scored as its model card does: P("yes") against "no" at the last token of its
    chat prompt; `instruction` replaces the card's default task instruction (it applies to these only). They
    run on torch: `backend="onnx"` and `quantize` are refused for them.

    ModelLoadError, naming the folder, for an embedding model (use `embedkit.load`), an architecture
    embedkit does not implement, or a missing or unreadable file; InputError for a bad argument.
    """
    from embedkit.errors import InputError
    from embedkit.hub import resolve_model_dir
    from embedkit.rerank.cross_encoder import load_cross_encoder
    from embedkit.rerank.qwen3 import is_qwen3_reranker_dir, load_qwen3_reranker

    model_dir, _ = resolve_model_dir(model, revision=revision, cache_dir=cache_dir)
    if is_qwen3_reranker_dir(model_dir):
        if backend == "onnx" or quantize is not None:
            raise InputError(
                f"{model_dir}: a Qwen3-Reranker runs on torch only (backend='onnx' and quantize are not supported)"
            )
        return load_qwen3_reranker(
            model,
            instruction=instruction,
            max_length=max_length,
            device=device,
            dtype=dtype,
            batch_tokens=batch_tokens,
            revision=revision,
            cache_dir=cache_dir,
        )
    if instruction is not None:
        raise InputError("instruction= applies to LLM rerankers (Qwen3-Reranker); this folder is a cross-encoder")
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
