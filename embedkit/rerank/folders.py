"""What kind of model a folder holds, read from its JSON files (and, for a Qwen3 folder, its safetensors
headers): embedder or reranker.

`embedkit.load` and `embedkit.load_reranker` both ask, so that each refuses the other's folders with an
error naming the right loader instead of failing on a missing or unexpected tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["cross_encoder_reason", "read_object", "reranker_reason"]


def read_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; {} when the file is absent or holds no object (the caller decides)."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def cross_encoder_reason(model_dir: Path) -> str | None:
    """Why `model_dir` is a cross-encoder (a sequence-classification checkpoint), or None when nothing says so.

    Any one suffices: config.json's `architectures` names a *ForSequenceClassification class (every
    cross-encoder on the hub, saved by any sentence-transformers version); config_sentence_transformers.json's
    `model_type` is "CrossEncoder" (sentence-transformers >= 5); sentence_bert_config.json's
    `transformer_task` is "sequence-classification" (sentence-transformers >= 6).
    """
    architectures = read_object(model_dir / "config.json").get("architectures")
    if isinstance(architectures, list):
        for name in architectures:
            if isinstance(name, str) and name.endswith("ForSequenceClassification"):
                return f"config.json's architectures name {name}"
    if read_object(model_dir / "config_sentence_transformers.json").get("model_type") == "CrossEncoder":
        return "config_sentence_transformers.json's model_type is CrossEncoder"
    if read_object(model_dir / "sentence_bert_config.json").get("transformer_task") == "sequence-classification":
        return "sentence_bert_config.json's transformer_task is sequence-classification"
    return None


def reranker_reason(model_dir: Path) -> str | None:
    """Why `model_dir` is a reranker (a cross-encoder, or a Qwen3ForCausalLM with its LM head: Qwen3-Reranker),
    or None when nothing says so. A Qwen3 folder's tensor names are read (its safetensors headers) because
    Qwen3-Embedding's config.json names Qwen3ForCausalLM too; only the weights tell the two apart."""
    reason = cross_encoder_reason(model_dir)
    if reason is not None:
        return reason
    from embedkit.rerank.qwen3 import is_qwen3_reranker_dir

    if is_qwen3_reranker_dir(model_dir):
        return "a Qwen3ForCausalLM checkpoint with its LM head, as Qwen3-Reranker is"
    return None
