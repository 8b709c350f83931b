"""The sequence-classification head on an encoder: a pair's first-token state -> label logits, for cross-encoders.

Every cross-encoder kind embedkit reads scores a (query, document) pair the same way: a pooled state (the
first token's, [CLS] / <s>), a dense layer H -> H with an activation (tanh), then a projection onto the labels:

    logits = tanh(h_0 W_d^T + b_d) W_o^T + b_o        h_0 [B, H] -> [B, L]

ModernBERT's `ModernBertForSequenceClassification` generalises it in three places, which `ClassificationHead`
takes as arguments: its activation is `classifier_activation` (GELU), a LayerNorm follows it, and the pooled
state is the first token's or the mean of the real tokens (`classifier_pooling`):

    logits = LayerNorm(act(p W_d^T [+ b_d])) W_o^T + b_o,   p = h_0 or mean_t h_t

Only where checkpoints keep the two layers differs: BERT's `BertForSequenceClassification` calls the dense
layer its pooler (`bert.pooler.dense`, `classifier`), XLM-RoBERTa's `XLMRobertaForSequenceClassification`
puts both in its classification head (`classifier.dense`, `classifier.out_proj`), GTE's
`NewForSequenceClassification` uses the pooler as BERT does (`new.pooler.dense`, `classifier`), ModernBERT
keeps its own head (`head.dense`, `head.norm`) and `classifier`. Dropout is
inactive at inference and has no tensors. A family declares its names (`ClassifierNames`, in the family
file) and gets a `SequenceClassifier` (its encoder + this head) with one tensor layout covering both.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from embedkit.errors import ModelLoadError
from embedkit.models.base import Attention
from embedkit.models.layers import PaddedAttention
from embedkit.models.loading import TensorLayout

__all__ = [
    "ClassificationHead",
    "ClassifierNames",
    "PairEncoder",
    "SequenceClassifier",
    "build_sequence_classifier",
    "classifier_layout",
    "num_labels",
]


class PairEncoder(Protocol):
    """An encoder that reads segment ids (BERT's token types): what a cross-encoder needs of its family."""

    causal: bool

    @property
    def hidden_size(self) -> int: ...

    @property
    def max_positions(self) -> int: ...

    @property
    def learned_positions(self) -> bool: ...

    @property
    def token_types(self) -> int:
        """Rows of the token-type table; 0 or 1: the model reads no segment ids."""
        ...

    def encode(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attn: Attention,
        adapters: torch.Tensor | None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def to(self, *args: object, **kwargs: object) -> nn.Module: ...


@dataclass(frozen=True)
class ClassifierNames:
    """Where a family's sequence-classification checkpoints keep the encoder and the head (published names)."""

    encoder_prefix: str  # "bert.", "roberta.", "new.": the encoder's tensors sit under it
    dense: str  # the H -> H layer before tanh, e.g. "bert.pooler.dense."
    out: str  # the H -> L projection, e.g. "classifier."
    norm: str | None = None  # the norm after the activation, where the head has one (ModernBERT: "head.norm.")


class ClassificationHead(nn.Module):
    """Pooled states [B, H] -> logits [B, L] (module docstring).

    The defaults are BERT's head (first token, dense with bias, tanh, no norm); ModernBERT passes its
    activation, a dense layer without bias, its LayerNorm and its pooling ("cls" or "mean").
    """

    def __init__(
        self,
        hidden_size: int,
        labels: int,
        *,
        activation: Callable[[torch.Tensor], torch.Tensor] = torch.tanh,
        dense_bias: bool = True,
        norm: nn.Module | None = None,
        pooling: str = "cls",
    ) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ModelLoadError(f"classifier pooling {pooling!r} is not supported ('cls' or 'mean')")
        self.dense = nn.Linear(hidden_size, hidden_size, bias=dense_bias)
        self.act = activation
        self.norm = norm if norm is not None else nn.Identity()
        self.out = nn.Linear(hidden_size, labels)
        self.pooling = pooling

    @property
    def labels(self) -> int:
        return int(self.out.out_features)

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """states [B, T, H], attention_mask [B, T] bool (right-padded) -> [B, H]: the first token, or the mean
        of the real tokens (as ModernBertForSequenceClassification's "mean")."""
        if self.pooling == "cls":
            return states[:, 0]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)  # [B, T, 1]
        return (states * mask).sum(dim=1) / mask.sum(dim=1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.act(self.dense(pooled))))


class SequenceClassifier(nn.Module):
    """An encoder and its classification head, one module so that one checkpoint loads into it by name.

    `forward_padded` (also the graph ONNX export traces) takes per-token segment ids (0 for the query's
    part, 1 for the document's), read only when the encoder has a token-type table of two or more rows.
    """

    def __init__(self, encoder: nn.Module, head: ClassificationHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    @property
    def pair_encoder(self) -> PairEncoder:
        encoder: PairEncoder = self.encoder  # type: ignore[assignment]
        return encoder

    @property
    def labels(self) -> int:
        return self.head.labels

    def forward_padded(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, attention_mask (bool), position_ids, token_type_ids [B, T], right-padded -> logits [B, L]."""
        encoder = self.pair_encoder
        attn = PaddedAttention(attention_mask.bool(), causal=encoder.causal)
        types = token_type_ids if encoder.token_types > 1 else None
        # the head reads the first token only: an encoder that can run its last layer for that position
        # alone (BERT, XLM-RoBERTa, GTE: `encode_first`) skips the rest of that layer's work
        encode_first = getattr(encoder, "encode_first", None)
        if encode_first is not None and self.head.pooling == "cls":
            return self.head(encode_first(input_ids, position_ids, attn, token_type_ids=types))
        states = encoder.encode(input_ids, position_ids, attn, None, token_type_ids=types)
        return self.head(self.head.pool(states, attention_mask.bool()))


def num_labels(config: dict, source: str) -> int:
    """The label count as transformers reads it: `num_labels`, else the size of `id2label` (else 2, its default)."""
    value = config.get("num_labels")
    if value is None:
        id2label = config.get("id2label")
        value = len(id2label) if isinstance(id2label, dict) and id2label else 2
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelLoadError(f"{source}/config.json: num_labels={value!r}; expected a positive int")
    return value


def classifier_layout(base: TensorLayout, names: ClassifierNames) -> TensorLayout:
    """The layout of a sequence-classification checkpoint: the encoder's own layout under
    `names.encoder_prefix` (mapped onto `SequenceClassifier.encoder`) and the head's two layers."""
    prefix = names.encoder_prefix
    renames = {
        group: tuple((prefix + published, "encoder." + ours) for published, ours in pairs)
        for group, pairs in base.renames.items()
    }
    renames["head"] = ((names.dense, "head.dense."), (names.out, "head.out."))
    if names.norm is not None:
        renames["head"] += ((names.norm, "head.norm."),)
    renames["encoder"] = ((prefix, "encoder."),)  # every other encoder tensor keeps its name; last, as a catch-all
    # the base layout ignores every head (pooler, classifier): here the classifier is read, and the pooler
    # too where it is the head's dense layer (BERT, GTE); other leftovers (position_ids, MLM heads) stay ignored
    read_pooler = names.dense.startswith(prefix + "pooler.")
    ignore = [
        re.escape(prefix) + pattern
        for pattern in base.ignore
        if not pattern.startswith(r"classifier\.") and not (read_pooler and pattern.startswith(r"pooler\."))
    ]
    return TensorLayout(anchor=prefix + base.anchor, prefixes=("",), ignore=tuple(ignore), renames=renames)


def build_sequence_classifier(
    encoder: nn.Module,
    base: TensorLayout,
    names: ClassifierNames,
    *,
    config: dict,
    hidden_size: int,
    tensor_names: set[str],
    source: str,
    head: ClassificationHead | None = None,
) -> tuple[SequenceClassifier, TensorLayout]:
    """`encoder` with a classification head of config.json's `num_labels` (or the family's own `head`), and the
    checkpoint's layout. ModelLoadError when the weights hold no head (an embedding model is no cross-encoder)."""
    if tensor_names and not any(name.startswith(names.out) for name in tensor_names):
        raise ModelLoadError(
            f"{source}: no sequence-classification head in the weights (no {names.out}* tensors); a cross-encoder "
            "is a checkpoint saved with its classifier (e.g. BertForSequenceClassification). For an embedding "
            "model use embedkit.load"
        )
    if head is None:
        head = ClassificationHead(hidden_size, num_labels(config, source))
    return SequenceClassifier(encoder, head), classifier_layout(base, names)
