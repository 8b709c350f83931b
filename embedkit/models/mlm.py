"""The masked-language-model head on an encoder: token states -> vocabulary logits, for SPLADE.

The head every BERT-like MLM publishes (Devlin et al. 2018; transformers' `BertLMPredictionHead`,
`DistilBertForMaskedLM`): a dense layer H -> H, the encoder's activation, LayerNorm, then a projection onto
the vocabulary whose weight is the word-embedding table (tied) and whose bias is the head's own:

    logits = LayerNorm(act(h W_t^T + b_t)) E^T + b        h [N, H], E [V, H] -> [N, V]

A family declares where its checkpoints keep the head (`MLMHeadNames`, in the family file) and gets a
`MaskedLM` (its encoder + this head) with one tensor layout covering both. SPLADE's pooling over the logits
lives with the sparse encoder (embedkit/sparse/splade.py); the head does maths only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from embedkit.errors import ModelLoadError
from embedkit.models.base import EncoderModel
from embedkit.models.layers import activation
from embedkit.models.loading import TensorLayout

__all__ = ["MLMHead", "MLMHeadNames", "MaskedLM", "build_masked_lm", "masked_lm_layout"]


@dataclass(frozen=True)
class MLMHeadNames:
    """Where a family's masked-LM checkpoints keep the encoder and the head (published names, full)."""

    encoder_prefix: str  # "bert.", "distilbert.": the encoder's tensors sit under it
    dense: str  # the H -> H transform, e.g. "cls.predictions.transform.dense."
    norm: str  # its LayerNorm
    bias: tuple[str, ...]  # the vocabulary bias (full tensor names): the first present is read, the rest are copies
    decoder_weight: str  # the projection's weight: absent or equal to the word embeddings when tied
    ignore: Sequence[str] = ()  # regexes (full names) of tensors the head does not use (tied copies, NSP head)


class MLMHead(nn.Module):
    """h [..., H] -> logits [..., V]; the projection is the word-embedding table unless `untied`."""

    def __init__(
        self, hidden_size: int, vocab_size: int, hidden_act: str, eps: float, word_embeddings: nn.Embedding
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = activation(hidden_act)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.bias = nn.Parameter(torch.empty(vocab_size))
        self.decoder: nn.Parameter | None = None  # set by `untie` for checkpoints with their own projection
        # the encoder's table, held without registering it here: the weights are the encoder's
        self.tied = [word_embeddings]

    def untie(self, vocab_size: int, hidden_size: int) -> None:
        self.decoder = nn.Parameter(torch.empty(vocab_size, hidden_size))

    @property
    def projection(self) -> torch.Tensor:
        """[V, H]: the decoder weight."""
        return self.decoder if self.decoder is not None else self.tied[0].weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> logits [..., V]."""
        x = self.norm(self.act(self.dense(hidden)))
        return functional.linear(x, self.projection, self.bias)


class MaskedLM(nn.Module):
    """An encoder and its MLM head, as one module so that one checkpoint loads into it by name."""

    def __init__(self, encoder: EncoderModel, head: MLMHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head


def masked_lm_layout(base: TensorLayout, names: MLMHeadNames, *, tied: bool, bias: str) -> TensorLayout:
    """The layout of a masked-LM checkpoint: the encoder's own layout under `names.encoder_prefix`
    (mapped onto `MaskedLM.encoder`), and the head's tensors (onto `MaskedLM.head`); `bias` is the name
    of the vocabulary bias this checkpoint holds."""
    prefix = names.encoder_prefix
    renames = {
        group: tuple((prefix + published, "encoder." + ours) for published, ours in pairs)
        for group, pairs in base.renames.items()
    }
    head = [(names.dense, "head.dense."), (names.norm, "head.norm."), (bias, "head.bias")]
    if not tied:
        head.append((names.decoder_weight, "head.decoder"))
    renames["head"] = tuple(head)
    renames["encoder"] = ((prefix, "encoder."),)  # every other encoder tensor keeps its name; last, as a catch-all
    ignore = [re.escape(prefix) + pattern for pattern in base.ignore if not pattern.startswith(r"cls\.")]
    ignore += list(names.ignore)
    # transformers ties the decoder's bias to the head's: other names of it are copies
    ignore += [re.escape(other) for other in names.bias if other != bias]
    if tied:
        ignore.append(re.escape(names.decoder_weight))
    return TensorLayout(anchor=prefix + base.anchor, prefixes=("",), ignore=tuple(ignore), renames=renames)


def build_masked_lm(
    encoder: EncoderModel,
    base: TensorLayout,
    names: MLMHeadNames,
    *,
    config: dict,
    hidden_act: str,
    eps: float,
    tensor_names: set[str],
    source: str,
) -> tuple[MaskedLM, TensorLayout]:
    """`encoder` with an MLM head, and the checkpoint's layout. The projection is tied to the word
    embeddings as config.json's `tie_word_embeddings` says (default true, as transformers'); ModelLoadError
    when the checkpoint holds no head (a plain encoder saved without its MLM head is no SPLADE model)."""
    word_embeddings = encoder.get_submodule("embeddings.word_embeddings")
    if not isinstance(word_embeddings, nn.Embedding):
        raise ModelLoadError(f"{source}: the encoder has no word-embedding table for the MLM head")
    if tensor_names and not any(name.startswith(names.dense) for name in tensor_names):
        raise ModelLoadError(
            f"{source}: no masked-LM head in the weights (no {names.dense}* tensors); SPLADE needs a checkpoint "
            "saved with its MLM head (e.g. BertForMaskedLM, DistilBertForMaskedLM)"
        )
    bias = next((name for name in names.bias if name in tensor_names), names.bias[0])
    head = MLMHead(encoder.hidden_size, word_embeddings.num_embeddings, hidden_act, eps, word_embeddings)
    tied = config.get("tie_word_embeddings", True) is not False
    if not tied:
        head.untie(word_embeddings.num_embeddings, encoder.hidden_size)
    return MaskedLM(encoder, head), masked_lm_layout(base, names, tied=tied, bias=bias)
