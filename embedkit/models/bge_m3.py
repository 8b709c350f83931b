"""bge-m3's two heads beside its dense vector: lexical weights (sparse) and the multi-vector (ColBERT) output.

BAAI/bge-m3 (Chen et al. 2024, "M3-Embedding", 2402.03216) is an XLM-RoBERTa encoder (models/xlm_roberta.py;
its dense vector is the normalised CLS state). Its repository also ships two linear heads over the last
hidden states h [T, H] of a text, as torch pickles of a state dict (`weight`, `bias`):

- `sparse_linear.pt`, Linear(H -> 1). Token t weighs w_t = relu(sparse_linear(h_t)); a text's lexical
  weights keep, per token id, the MAX w_t over the positions holding that id, leave out the tokenizer's
  cls, eos, pad and unk tokens, and keep only w > 0 (FlagEmbedding's `_sparse_embedding` with
  `return_embedding=False`, then `M3Embedder._process_token_weights`).
- `colbert_linear.pt`, Linear(H -> D) (D = H for bge-m3). The multi-vector of a text is
  colbert_linear(h_t) for each real token AFTER the first (the CLS state, which the dense vector uses, is
  dropped; the end token is kept), each L2-normalised: [T - 1, D] (FlagEmbedding's `_colbert_embedding`,
  the `normalize_embeddings` step of its forward, and `_process_colbert_vecs`).
- The ColBERT score of a query Q [m, D] against a document P [n, D] is (1/m) * sum_i max_j q_i . p_j
  (FlagEmbedding's `colbert_score`). Qdrant's MaxSim multivector comparator computes the sum alone,
  sum_i max_j q_i . p_j: m is the query's, the same for every document, so both order documents alike and
  FlagEmbedding's score is Qdrant's divided by the number of query vectors.

The heads run in torch on the encoder's token states, whichever backend produced them (torch, or the
exported encoder graph on ONNX Runtime): one forward pass gives the dense, sparse and multi-vector outputs.

The head files are read with `torch.load(weights_only=True)` (tensors only: no object of the pickle is
built), or from `sparse_linear.safetensors` / `colbert_linear.safetensors` when those exist (preferred).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from embedkit.errors import ModelLoadError

__all__ = [
    "COLBERT_FILE",
    "SPARSE_FILE",
    "M3Embeddings",
    "M3Heads",
    "colbert_score",
    "has_m3_heads",
    "load_m3_heads",
    "maxsim",
    "special_token_ids",
]

SPARSE_FILE = "sparse_linear"
COLBERT_FILE = "colbert_linear"
_SUFFIXES = (".safetensors", ".pt")  # safetensors first: no unpickling at all
# the tokens FlagEmbedding leaves out of the lexical weights, by their names in the tokenizer's files
_UNUSED_TOKENS = ("cls_token", "eos_token", "pad_token", "unk_token")


def _head_file(model_dir: Path, stem: str) -> Path | None:
    for suffix in _SUFFIXES:
        if (model_dir / (stem + suffix)).is_file():
            return model_dir / (stem + suffix)
    return None


def has_m3_heads(model_dir: Path) -> bool:
    """True when `model_dir` holds bge-m3's sparse or ColBERT head (either file form)."""
    return any(_head_file(model_dir, stem) is not None for stem in (SPARSE_FILE, COLBERT_FILE))


def _read_linear(path: Path, hidden_size: int, out_features: int | None) -> nn.Linear:
    """A Linear(hidden_size -> out) from a state dict file with exactly `weight` [out, H] and `bias` [out].

    ModelLoadError naming the file for an unreadable file, other keys, or shapes that do not fit."""
    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"{path}: cannot read the head's weights ({exc})") from exc
    if not isinstance(state, dict) or set(state) != {"weight", "bias"}:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ModelLoadError(f"{path}: expected a state dict of a Linear layer ('weight', 'bias'), got {keys}")
    weight, bias = state["weight"], state["bias"]
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise ModelLoadError(f"{path}: 'weight' and 'bias' must be tensors")
    out = weight.shape[0] if weight.ndim == 2 else -1
    if (
        weight.ndim != 2
        or weight.shape[1] != hidden_size
        or (out_features is not None and out != out_features)
        or out < 1
        or tuple(bias.shape) != (out,)
    ):
        wanted = f"[{out_features if out_features is not None else 'D'}, {hidden_size}]"
        raise ModelLoadError(
            f"{path}: weight {tuple(weight.shape)} and bias {tuple(bias.shape)} do not make a Linear layer over the "
            f"encoder's {hidden_size}-wide states (expected weight {wanted} and a bias of its first size)"
        )
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise ModelLoadError(f"{path}: the head's weights hold NaN or Inf")
    layer = nn.Linear(hidden_size, out)
    with torch.no_grad():
        layer.weight.copy_(weight.float())
        layer.bias.copy_(bias.float())
    return layer


def _token_name(value: Any) -> str | None:
    """A special token as tokenizer_config.json / special_tokens_map.json write it: a string or {"content"}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def special_token_ids(model_dir: Path, token_to_id: Any) -> frozenset[int]:
    """The ids of the cls, eos, pad and unk tokens the model folder's tokenizer files name (the ones
    FlagEmbedding leaves out of lexical weights); `token_to_id` maps a token to its id or None."""
    names: dict[str, str] = {}
    for file in ("tokenizer_config.json", "special_tokens_map.json"):  # the latter wins, as in transformers
        path = model_dir / file
        if not path.is_file():
            continue
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: cannot read ({exc})") from exc
        if isinstance(raw, dict):
            names.update({key: name for key in _UNUSED_TOKENS if (name := _token_name(raw.get(key))) is not None})
    ids = {token_to_id(name) for name in names.values()}
    return frozenset(i for i in ids if isinstance(i, int))


@dataclass(frozen=True)
class M3Embeddings:
    """Every output of one forward pass over texts (`LocalEmbedder.embed_all`), in input order."""

    dense: np.ndarray  # float32 [B, dimension], post-processed as `embed` does
    lexical: list[dict[int, float]] | None  # per text: token id -> weight > 0 (None without the sparse head)
    multivector: list[np.ndarray] | None  # per text: float32 [T - 1, D], unit rows (None without the ColBERT head)


class M3Heads(nn.Module):
    """bge-m3's sparse and ColBERT heads (either may be absent) over packed token states [N, H].

    `unused_ids`: the token ids left out of lexical weights (`special_token_ids`). `digest`: a sha256 over
    the head files, for fingerprints.
    """

    def __init__(
        self,
        sparse: nn.Linear | None,
        colbert: nn.Linear | None,
        unused_ids: frozenset[int],
        digest: str,
        files: dict[str, Path],
    ) -> None:
        super().__init__()
        self.sparse = sparse
        self.colbert = colbert
        self.unused_ids = unused_ids
        self.digest = digest
        self.files = files

    @property
    def multivector_size(self) -> int | None:
        """D, the width of a ColBERT vector (None without the ColBERT head)."""
        return None if self.colbert is None else self.colbert.out_features

    def lexical_weights(
        self, states: torch.Tensor, input_ids: torch.Tensor, lengths: list[int]
    ) -> list[dict[int, float]]:
        """Packed states [N, H] and ids [N] of rows of `lengths` tokens -> per row {token id: max relu weight},
        the unused (special) ids and zero weights left out. Needs the sparse head (the caller checks)."""
        assert self.sparse is not None
        weights = torch.relu(self.sparse(states.to(self.sparse.weight.dtype))).squeeze(-1).float().cpu()
        ids = input_ids.cpu()
        unused = torch.tensor(sorted(self.unused_ids), dtype=ids.dtype)
        out: list[dict[int, float]] = []
        for row_w, row_ids in zip(weights.split(lengths), ids.split(lengths), strict=True):
            keep = (row_w > 0) & ~torch.isin(row_ids, unused)
            row_ids, row_w = row_ids[keep], row_w[keep]
            if not len(row_ids):
                out.append({})
                continue
            # the max over repeated ids: one scatter_reduce over the row's distinct ids
            unique, inverse = torch.unique(row_ids, return_inverse=True)
            best = torch.zeros(len(unique), dtype=row_w.dtype).scatter_reduce(0, inverse, row_w, reduce="amax")
            out.append(dict(zip(unique.tolist(), best.tolist(), strict=True)))
        return out

    def multivectors(self, states: torch.Tensor, lengths: list[int]) -> list[np.ndarray]:
        """Packed states [N, H] of rows of `lengths` tokens -> per row float32 [length - 1, D]: the ColBERT
        vectors of every token but the first, each L2-normalised (a zero vector stays zero)."""
        assert self.colbert is not None
        vectors = self.colbert(states.to(self.colbert.weight.dtype)).float()
        vectors = torch.nn.functional.normalize(vectors, dim=-1).cpu().numpy()
        bounds = np.cumsum([0, *lengths])
        return [vectors[start + 1 : end] for start, end in itertools.pairwise(bounds)]


def load_m3_heads(model_dir: Path, hidden_size: int, token_to_id: Any) -> M3Heads | None:
    """bge-m3's heads from `model_dir` (None when it has neither file). The sparse head must be
    Linear(H -> 1); the ColBERT head Linear(H -> D), any D. ModelLoadError naming the file otherwise."""
    sparse_path, colbert_path = _head_file(model_dir, SPARSE_FILE), _head_file(model_dir, COLBERT_FILE)
    if sparse_path is None and colbert_path is None:
        return None
    sparse = _read_linear(sparse_path, hidden_size, 1) if sparse_path is not None else None
    colbert = _read_linear(colbert_path, hidden_size, None) if colbert_path is not None else None
    files = {name: path for name, path in (("sparse", sparse_path), ("colbert", colbert_path)) if path is not None}
    digest = hashlib.sha256()
    for name, path in sorted(files.items()):
        digest.update(name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return M3Heads(sparse, colbert, special_token_ids(model_dir, token_to_id), digest.hexdigest(), files).eval()


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """sum_i max_j q_i . d_j over query [m, D] and document [n, D]: what Qdrant's MaxSim comparator gives."""
    return float((np.asarray(query, np.float64) @ np.asarray(document, np.float64).T).max(axis=1).sum())


def colbert_score(query: np.ndarray, document: np.ndarray) -> float:
    """FlagEmbedding's ColBERT score: `maxsim(query, document) / len(query)` (the mean over query vectors)."""
    return maxsim(query, document) / len(query)
