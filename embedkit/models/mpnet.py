"""MPNet encoder (all-mpnet-base-v2, multi-qa-mpnet-base-dot-v1 / -cos-v1, ...) in plain PyTorch.

Song et al. 2020, "MPNet: Masked and Permuted Pre-training for Language Understanding"; transformers'
`MPNetModel`, whose published tensor names it loads. BERT's post-LayerNorm transformer (GELU feed-forward,
the same layer maths, so `bert.Layer` runs it) with three differences:

* no token-type table: `embeddings.{word,position}_embeddings` and `embeddings.LayerNorm` only;
* learned absolute positions offset as RoBERTa's: transformers' `MPNetEmbeddings` fixes padding_idx at
  1 whatever config.json says, so the first real token reads row 2 and a 514-row table serves 512 tokens;
* a T5-style relative position bias in every layer's attention: the key-minus-query distance falls in one
  of 32 buckets (16 per direction: exact up to 7, then logarithmic up to 128, the last bucket beyond), and
  one learned table `encoder.relative_attention_bias.weight` [32, heads], shared by all layers, adds
  bias[bucket, h] to head h's scaled scores. transformers computes it once per forward over the padded
  length (`MPNetEncoder.compute_position_bias` without position ids), as here.

The attention names are `encoder.layer.N.attention.attn.{q,k,v,o}` and `encoder.layer.N.attention.LayerNorm`;
the feed-forward is BERT's (`intermediate.dense`, `output.dense`, `output.LayerNorm`). Checkpoints saved from
`MPNetForMaskedLM` (and sentence-transformers' own, saved from `MPNetModel`, with config.json still naming
`MPNetForMaskedLM`) carry a `pooler.*` or `lm_head.*` that an embedding model does not read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from embedkit.errors import ModelLoadError
from embedkit.models.base import Attention, EncoderModel
from embedkit.models.bert import EMBEDDINGS_RENAMES, BertConfig, Embeddings, Layer
from embedkit.models.loading import TensorLayout, config_from_dict

__all__ = ["DISTANCE_BUCKETS", "LAYOUT", "MPNet", "MPNetConfig", "build", "relative_buckets"]

PADDING_IDX = 1  # transformers' MPNetEmbeddings.padding_idx: a constant, not config.json's pad_token_id
NUM_BUCKETS = 32  # MPNetEncoder.compute_position_bias's default, which MPNetEncoder.forward always uses
MAX_DISTANCE = 128  # relative_position_bucket's default; not a config field


def _distance_bucket(distance: int) -> int:
    """Bucket of |key - query| = distance within one direction (16 buckets), as T5's relative_position_bucket:
    exact below 8, then 8 + floor(log(distance / 8) / log(128 / 8) * 8), at most 15."""
    half = NUM_BUCKETS // 2
    exact = half // 2
    if distance < exact:
        return distance
    logarithmic = exact + int(math.log(distance / exact) / math.log(MAX_DISTANCE / exact) * (half - exact))
    return min(logarithmic, half - 1)


# bucket of each distance 0..MAX_DISTANCE (every longer distance shares the last): a table, so the graph holds
# integer ops and one gather only, and ONNX Runtime's log can never round a distance into the next bucket
DISTANCE_BUCKETS: tuple[int, ...] = tuple(_distance_bucket(d) for d in range(MAX_DISTANCE + 1))


def relative_buckets(length: int, device: torch.device) -> torch.Tensor:
    """[T, T] int64: the bucket of (query i, key j) over T = `length` positions.

    0..15 when the key is at or before the query, 16..31 when after (transformers' sign convention:
    n = i - j, `(n < 0) * 16`, then the bucket of |n|).
    """
    positions = torch.arange(length, device=device)
    relative = positions[None, :] - positions[:, None]  # key - query: [T, T]
    table = torch.tensor(DISTANCE_BUCKETS, dtype=torch.int64, device=device)
    buckets = table[relative.abs().clamp(max=MAX_DISTANCE)]
    return buckets + (relative > 0).to(torch.int64) * (NUM_BUCKETS // 2)


@dataclass(frozen=True)
class MPNetConfig(BertConfig):
    """BertConfig's fields (type_vocab_size always 0) plus the relative-bias table's size."""

    relative_attention_num_buckets: int = NUM_BUCKETS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.relative_attention_num_buckets != NUM_BUCKETS:
            # transformers sizes the table from the config but always buckets into 32
            raise ModelLoadError(
                f"config.json: relative_attention_num_buckets={self.relative_attention_num_buckets} is not supported "
                f"(MPNetModel buckets relative positions into {NUM_BUCKETS}; every published MPNet uses {NUM_BUCKETS})"
            )
        if self.max_position_embeddings <= PADDING_IDX + 1:
            raise ModelLoadError(
                f"config.json: max_position_embeddings={self.max_position_embeddings} leaves no position for a "
                f"token (rows 0..{PADDING_IDX} are padding)"
            )


# Published name (after the prefix) -> attribute path in `MPNet` (its layers are `bert.Layer`s).
LAYOUT = TensorLayout(
    anchor="embeddings.word_embeddings.weight",
    prefixes=("", "mpnet."),  # `mpnet.` when saved from an MPNetFor* head class
    ignore=(r"embeddings\.position_ids", r"pooler\..*", r"lm_head\..*"),
    renames={
        "embeddings": EMBEDDINGS_RENAMES,
        "attention": (
            ("encoder.layer.{n}.attention.attn.q.", "layers.{n}.attn.query."),
            ("encoder.layer.{n}.attention.attn.k.", "layers.{n}.attn.key."),
            ("encoder.layer.{n}.attention.attn.v.", "layers.{n}.attn.value."),
            ("encoder.layer.{n}.attention.attn.o.", "layers.{n}.attn.out."),
            ("encoder.layer.{n}.attention.LayerNorm.", "layers.{n}.attn_norm."),
            ("encoder.relative_attention_bias.", "relative_attention_bias."),
        ),
        "mlp": (
            ("encoder.layer.{n}.intermediate.dense.", "layers.{n}.mlp.up."),
            ("encoder.layer.{n}.output.dense.", "layers.{n}.mlp.down."),
            ("encoder.layer.{n}.output.LayerNorm.", "layers.{n}.mlp_norm."),
        ),
    },
)


class MPNet(EncoderModel):
    learned_positions = True  # a position table: inputs past its end have no position

    def __init__(self, config: MPNetConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config, position_offset=PADDING_IDX + 1)  # no token-type table
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_attention_heads)

    @property
    def max_positions(self) -> int:
        return self.config.max_position_embeddings - PADDING_IDX - 1

    def position_bias(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """[nh, T, T]: each head's learned bias for every (query, key) pair over T = `length` positions."""
        weight = self.relative_attention_bias.weight  # [32, nh]
        buckets = relative_buckets(length, weight.device)  # [T, T]
        return weight[buckets].permute(2, 0, 1).to(dtype)

    def encode(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn: Attention, adapters: torch.Tensor | None
    ) -> torch.Tensor:
        """input_ids, position_ids [B, T] or [N] -> token states [B, T, H] or [N, H]."""
        x = self.embeddings(input_ids, position_ids)  # positions 0-based here, offset inside
        # once per forward, shared by every layer; over the padded view's positions (a row's real tokens
        # are its first L, so its distances are its own)
        attn = attn.with_bias(self.position_bias(attn.length, x.dtype))
        for layer in self.layers:
            x = layer(x, attn)
        return x


def build(config: dict, tensor_names: set[str], source: str) -> tuple[MPNet, TensorLayout]:
    """The model (on whatever device is current) and tensor layout for an MPNet checkpoint."""
    # MPNetConfig's defaults where config.json is silent; no token types whatever it says (MPNet has no table)
    defaults = {"max_position_embeddings": 512, "layer_norm_eps": 1e-12, "pad_token_id": PADDING_IDX}
    settings = {**config, "type_vocab_size": 0}
    return MPNet(config_from_dict(MPNetConfig, settings, f"{source}/config.json", defaults=defaults)), LAYOUT
