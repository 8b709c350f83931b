"""BERT encoder (all-MiniLM-L6-v2, bge, e5, ...) in plain PyTorch.

Post-LayerNorm transformer with learned absolute position and token-type embeddings, as in
Devlin et al. 2018 and transformers' `BertModel`, whose published tensor names it loads:
`embeddings.{word,position,token_type}_embeddings`, `encoder.layer.N.attention.self.{query,key,value}`, ...
The pooler and any MLM head in the checkpoint are not part of an embedding model and are ignored by
`build`; `masked_lm` builds the encoder with its MLM head (`cls.predictions.*`, as `BertForMaskedLM`
publishes it) for SPLADE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from embedkit.errors import ModelLoadError
from embedkit.models.base import Attention, EncoderModel
from embedkit.models.classifier import ClassifierNames, SequenceClassifier, build_sequence_classifier
from embedkit.models.layers import activation
from embedkit.models.loading import TensorLayout, check_heads, config_from_dict
from embedkit.models.mlm import MaskedLM, MLMHeadNames, build_masked_lm

__all__ = [
    "ATTENTION_RENAMES",
    "CLASSIFIER",
    "EMBEDDINGS_RENAMES",
    "LAYOUT",
    "MLM_HEAD",
    "Bert",
    "BertConfig",
    "build",
    "masked_lm",
    "sequence_classifier",
]


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # 0: no token-type table (DistilBERT)
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        check_heads(self.hidden_size, self.num_attention_heads)


# Published name (after the prefix) -> attribute path in `Bert`, in named groups that JinaBERT reuses.
EMBEDDINGS_RENAMES = (("embeddings.LayerNorm.", "embeddings.norm."),)
ATTENTION_RENAMES = (
    ("encoder.layer.{n}.attention.self.query.", "layers.{n}.attn.query."),
    ("encoder.layer.{n}.attention.self.key.", "layers.{n}.attn.key."),
    ("encoder.layer.{n}.attention.self.value.", "layers.{n}.attn.value."),
    ("encoder.layer.{n}.attention.output.dense.", "layers.{n}.attn.out."),
    ("encoder.layer.{n}.attention.output.LayerNorm.", "layers.{n}.attn_norm."),
)
LAYOUT = TensorLayout(
    anchor="embeddings.word_embeddings.weight",
    prefixes=("", "bert.", "model."),
    ignore=(r"embeddings\.position_ids", r"pooler\..*", r"cls\..*"),
    renames={
        "embeddings": EMBEDDINGS_RENAMES,
        "attention": ATTENTION_RENAMES,
        "mlp": (
            ("encoder.layer.{n}.intermediate.dense.", "layers.{n}.mlp.up."),
            ("encoder.layer.{n}.output.dense.", "layers.{n}.mlp.down."),
            ("encoder.layer.{n}.output.LayerNorm.", "layers.{n}.mlp_norm."),
        ),
    },
)

# BertForMaskedLM's head (transformers' BertLMPredictionHead); `cls.predictions.decoder.bias` is tied to
# `cls.predictions.bias`, and a BertForPreTraining checkpoint also carries the next-sentence head
MLM_HEAD = MLMHeadNames(
    encoder_prefix="bert.",
    dense="cls.predictions.transform.dense.",
    norm="cls.predictions.transform.LayerNorm.",
    bias=("cls.predictions.bias", "cls.predictions.decoder.bias"),
    decoder_weight="cls.predictions.decoder.weight",
    ignore=(r"cls\.seq_relationship\..*",),
)

# BertForSequenceClassification (ms-marco-MiniLM cross-encoders): the pooler's dense layer + tanh over [CLS],
# then `classifier`
CLASSIFIER = ClassifierNames(encoder_prefix="bert.", dense="bert.pooler.dense.", out="classifier.")


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig, position_offset: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size else None
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.position_offset = position_offset

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids, position_ids (0-based in each row), token_type_ids [...] -> [..., H]."""
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids + self.position_offset)
        if self.token_type_embeddings is not None:
            if token_type_ids is not None:  # a cross-encoder's pair: segment 0 the query, 1 the document
                x = x + self.token_type_embeddings(token_type_ids)
            else:  # single-segment inputs: token type 0 everywhere, as sentence-transformers feeds them
                x = x + self.token_type_embeddings.weight[0]
        return self.norm(x)


class SelfAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.n_head = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, attn: Attention, queries: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., T, H] -> [..., T, H]; with `queries` [B, Q, H] (padded rows only) only those positions attend
        (to every key of x) -> [B, Q, H]."""
        q = self.query(x if queries is None else queries).unflatten(-1, (self.n_head, -1))
        k, v = (proj(x).unflatten(-1, (self.n_head, -1)) for proj in (self.key, self.value))
        return self.out(attn(q, k, v).flatten(-2))  # [..., nh, d] -> [..., H]


class FeedForward(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class Layer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = FeedForward(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, attn: Attention) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, attn))  # post-norm, as published
        return self.mlp_norm(x + self.mlp(x))

    def forward_first(self, x: torch.Tensor, attn: Attention) -> torch.Tensor:
        """The layer's output at each padded row's first position only: x [B, T, H] -> [B, 1, H]."""
        first = x[:, :1]
        first = self.attn_norm(first + self.attn(x, attn, queries=first))
        return self.mlp_norm(first + self.mlp(first))


class Bert(EncoderModel):
    learned_positions = True  # a position table: inputs past its end have no position

    def __init__(self, config: BertConfig, position_offset: int = 0) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config, position_offset)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))

    @property
    def token_types(self) -> int:
        """Rows of the token-type table (0: none)."""
        return self.config.type_vocab_size

    def encode(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attn: Attention,
        adapters: torch.Tensor | None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, position_ids, token_type_ids (None: all 0) [B, T] or [N] -> token states [B, T, H] or [N, H]."""
        x = self.embeddings(input_ids, position_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, attn)
        return x

    def encode_first(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attn: Attention,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Padded rows [B, T] -> the first token's final state [B, H], as `encode(...)[:, 0]`, with the last
        layer run for that position only (its keys and values still for every token): a sequence
        classifier reads nothing else, and a 6-layer cross-encoder saves most of a sixth of its work."""
        x = self.embeddings(input_ids, position_ids, token_type_ids)
        for layer in self.layers[:-1]:
            x = layer(x, attn)
        last: Layer = self.layers[-1]  # type: ignore[assignment]  # ModuleList indexes as Module
        return last.forward_first(x, attn)[:, 0]


def build(config: dict, tensor_names: set[str], source: str) -> tuple[Bert, TensorLayout]:
    """The model (on whatever device is current) and tensor layout for a BERT checkpoint."""
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ModelLoadError(
            f"{source}: position_embedding_type={config['position_embedding_type']!r} is not supported for BERT"
        )
    return Bert(config_from_dict(BertConfig, config, f"{source}/config.json")), LAYOUT


def masked_lm(config: dict, tensor_names: set[str], source: str) -> tuple[MaskedLM, TensorLayout]:
    """The encoder with its MLM head and the layout of a `BertForMaskedLM` checkpoint."""
    encoder, _ = build(config, tensor_names, source)
    return build_masked_lm(
        encoder,
        LAYOUT,
        MLM_HEAD,
        config=config,
        hidden_act=encoder.config.hidden_act,
        eps=encoder.config.layer_norm_eps,
        tensor_names=tensor_names,
        source=source,
    )


def sequence_classifier(config: dict, tensor_names: set[str], source: str) -> tuple[SequenceClassifier, TensorLayout]:
    """The encoder with its classification head and the layout of a `BertForSequenceClassification` checkpoint."""
    encoder, _ = build(config, tensor_names, source)
    return build_sequence_classifier(
        encoder,
        LAYOUT,
        CLASSIFIER,
        config=config,
        hidden_size=encoder.hidden_size,
        tensor_names=tensor_names,
        source=source,
    )
