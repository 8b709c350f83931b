"""What kind of model a folder holds, read from its JSON files only (no torch): embedder or reranker.

`embedkit.load` and `embedkit.load_reranker` both ask, so that each refuses the other's folders with an
error naming the right loader instead of failing on a missing or unexpected tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["cross_encoder_reason", "read_object"]


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
