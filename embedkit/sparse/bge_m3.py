"""bge-m3's lexical weights as an `embedkit.sparse.SparseEncoder`: hybrid search's sparse side from bge-m3.

The weights come from the model's `sparse_linear` head over its encoder's token states (see
embedkit.models.bge_m3 for the formula and its source): per token id of the text, the max of
relu(sparse_linear(h_t)) over the positions holding it, special tokens left out. A SparseVector's indices
are those token ids (below the tokenizer's vocabulary size), its values the weights; Qdrant's dot product
over shared indices is then FlagEmbedding's `compute_lexical_matching_score`. The weights are complete as
the model gives them: modifier None (no IDF). Queries and documents are encoded alike (bge-m3 has no
query instruction).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embedkit.embedder import validate_text
from embedkit.errors import ModelLoadError
from embedkit.local.embedder import LocalEmbedder
from embedkit.models.bge_m3 import has_m3_heads
from embedkit.sparse.base import SparseVector

__all__ = ["M3SparseEncoder", "is_m3_dir", "load_m3_sparse"]


def is_m3_dir(path: str | os.PathLike[str]) -> bool:
    """True when `path` is a local folder holding bge-m3's sparse head beside a model."""
    folder = Path(path)
    return folder.is_dir() and has_m3_heads(folder) and (folder / "config.json").is_file()


def _vector(weights: dict[int, float]) -> SparseVector:
    indices = sorted(weights)
    return SparseVector(indices, [float(weights[i]) for i in indices])


class M3SparseEncoder:
    """bge-m3's lexical weights over a LocalEmbedder that carries the sparse head (`embedkit.load` of a
    bge-m3 folder). `embed_documents` and `embed_query` run the same model (no prompt unless `task`)."""

    modifier: str | None = None

    def __init__(self, embedder: LocalEmbedder, *, task: str | None = None) -> None:
        heads = embedder.heads
        if heads is None or heads.sparse is None:
            raise ModelLoadError(
                f"{embedder.model_id}: no sparse_linear head beside the weights; a bge-m3 folder ships sparse_linear.pt"
            )
        self.embedder = embedder
        self.task = task
        self._digest = heads.digest

    def __repr__(self) -> str:
        return f"M3SparseEncoder(name={self.name!r}, backend={self.embedder.backend!r})"

    @property
    def name(self) -> str:
        return self.embedder.model_id

    @property
    def vocabulary_size(self) -> int:
        """Every index is below it."""
        return int(self.embedder.tokenizer.get_vocab_size(with_added_tokens=True))

    def embed_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        """One sparse vector per text, in order. InputError for an empty list, a non-str or an empty string."""
        return [_vector(weights) for weights in self.embedder.embed_lexical(texts, task=self.task)]

    def embed_query(self, text: str) -> SparseVector:
        """The query's sparse vector (empty when every token is special or weighs 0: it matches nothing)."""
        validate_text(text, 0)
        return self.embed_documents([text])[0]

    def fingerprint(self) -> dict[str, Any]:
        """What decides the vectors: the encoder's weights and the head's file digest."""
        return {
            "kind": "bge-m3-sparse",
            "name": self.name,
            "weights_digest": self.embedder.weights_digest,
            "head_digest": self._digest,
            "max_length": self.embedder.max_input_tokens,
            "task": self.task,
        }


def load_m3_sparse(model: str | os.PathLike[str], *, task: str | None = None, **options: Any) -> M3SparseEncoder:
    """bge-m3's sparse encoder from a model folder (or hub id): `embedkit.load(model, **options)` with the
    heads. ModelLoadError when the folder has no sparse_linear head."""
    from embedkit.local.loader import load

    return M3SparseEncoder(load(model, **options), task=task)
