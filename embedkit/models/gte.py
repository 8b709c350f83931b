"""GTE v1.5 / gte-multilingual ("NewModel", remote code `Alibaba-NLP/new-impl`) in plain PyTorch.

A post-LayerNorm BERT-like encoder without absolute positions: rotary embeddings (GPT-NeoX
`rotate_half` style) on q and k, a fused `qkv_proj`, and a gated MLP. It loads the published tensor
names (`encoder.layer.N.attention.qkv_proj`, `attn_ln`, `mlp.up_gate_proj`, ..., without prefix or
under `new.` when saved from a `NewFor*` head class).

Sources: new-impl `modeling.py` (NewEmbeddings, RotaryEmbedding, NTKScalingRotaryEmbedding,
NewAttention, NewGatedMLP, NewLayer, NewModel), checked against golden vectors from
the original code (tests/models/test_gte.py); transformers' native `gte` port (which chunks `up_gate_proj` into
[up | gate] and expresses NTK as linear scaling); TEI `backends/candle/src/models/gte.rs`.

RoPE with rope_scaling {"type": "ntk", "factor": f} is `layers.Rope` with scaling "ntk": new-impl's
`NTKScalingRotaryEmbedding` builds its cache for `max_position_embeddings * f` positions in its
constructor, so the scaled frequencies hold for every length (the formulas are in `layers.Rope`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from embedkit.errors import ModelLoadError
from embedkit.models.base import Attention, EncoderModel
from embedkit.models.classifier import ClassifierNames, SequenceClassifier, build_sequence_classifier
from embedkit.models.layers import ROPE_SCALINGS, RMSNorm, Rope, activation, apply_rope
from embedkit.models.loading import TensorLayout, check_heads, config_from_dict

__all__ = ["CLASSIFIER", "LAYOUT", "Gte", "GteConfig", "build", "sequence_classifier"]


@dataclass(frozen=True)
class GteConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 2048  # new-impl NewConfig defaults from here on
    type_vocab_size: int = 1  # 0 in gte-base-en-v1.5: no token-type table at all
    layer_norm_type: str = "layer_norm"
    layer_norm_eps: float = 1e-12
    position_embedding_type: str = "rope"
    pack_qkv: bool = True
    logn_attention_scale: bool = False
    logn_attention_clip1: bool = False
    # RoPE, normalised by `rope_settings` from `rope_theta`/`rope_scaling` or `rope_parameters`
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_mixed_b: float | None = None

    def __post_init__(self) -> None:
        check_heads(self.hidden_size, self.num_attention_heads)
        if self.position_embedding_type != "rope":
            raise ModelLoadError(
                f"config.json: position_embedding_type={self.position_embedding_type!r} is not supported for GTE "
                "(only 'rope', as every published checkpoint)"
            )
        if self.layer_norm_type not in ("layer_norm", "rms_norm"):
            raise ModelLoadError(f"config.json: layer_norm_type={self.layer_norm_type!r} is not supported")
        if self.rope_type not in ROPE_SCALINGS:
            raise ModelLoadError(
                f"config.json: RoPE scaling type {self.rope_type!r} is not supported "
                f"(supported: {', '.join(ROPE_SCALINGS)})"
            )
        if self.rope_type != "default" and not self.rope_factor >= 1.0:
            raise ModelLoadError(f"config.json: RoPE scaling factor {self.rope_factor} must be >= 1")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def rope_settings(config: dict[str, Any]) -> dict[str, Any]:
    """rope_theta / rope_type / rope_factor / rope_mixed_b from either config form.

    Published: `rope_theta` plus `rope_scaling` {"type": "ntk", "factor": f}. transformers 5:
    `rope_parameters` {"rope_theta": t, "rope_type": ..., "factor": ...} ("linear" in its native port).
    """
    parameters = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    if not scaling and parameters.get("rope_type", parameters.get("type", "default")) != "default":
        scaling = parameters
    settings: dict[str, Any] = {}
    theta = config.get("rope_theta", parameters.get("rope_theta"))
    if theta is not None:
        settings["rope_theta"] = float(theta)
    if scaling:
        settings["rope_type"] = scaling.get("type", scaling.get("rope_type"))
        settings["rope_factor"] = float(scaling.get("factor", 1.0))
        settings["rope_mixed_b"] = scaling.get("mixed_b")
    return settings


# Published name (after the prefix) -> attribute path in `Gte`.
LAYOUT = TensorLayout(
    anchor="embeddings.word_embeddings.weight",
    prefixes=("new.", ""),  # `new.` first, as TEI
    ignore=(r"embeddings\.position_ids", r"pooler\..*", r"classifier\..*", r"lm_head\..*"),
    renames={
        "embeddings": (("embeddings.LayerNorm.", "embeddings.norm."),),
        "attention": (
            ("encoder.layer.{n}.attention.qkv_proj.", "layers.{n}.attn.qkv."),
            ("encoder.layer.{n}.attention.q_proj.", "layers.{n}.attn.q."),
            ("encoder.layer.{n}.attention.k_proj.", "layers.{n}.attn.k."),
            ("encoder.layer.{n}.attention.v_proj.", "layers.{n}.attn.v."),
            ("encoder.layer.{n}.attention.o_proj.", "layers.{n}.attn.out."),
            ("encoder.layer.{n}.attn_ln.", "layers.{n}.attn_norm."),
        ),
        "mlp": (
            ("encoder.layer.{n}.mlp.up_gate_proj.", "layers.{n}.mlp.up_gate."),
            ("encoder.layer.{n}.mlp.down_proj.", "layers.{n}.mlp.down."),
            ("encoder.layer.{n}.mlp_ln.", "layers.{n}.mlp_norm."),
        ),
    },
)

# NewForSequenceClassification (gte-multilingual-reranker-base): new-impl's NewPooler (dense + tanh over the
# first token, as BERT's) under `new.`, then `classifier`
CLASSIFIER = ClassifierNames(encoder_prefix="new.", dense="new.pooler.dense.", out="classifier.")


def norm(config: GteConfig) -> nn.Module:
    if config.layer_norm_type == "rms_norm":
        return RMSNorm(config.hidden_size, config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class Embeddings(nn.Module):
    def __init__(self, config: GteConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size > 0 else None
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # LayerNorm whatever layer_norm_type

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.word_embeddings(input_ids)  # [..., H]; no absolute positions
        if self.token_type_embeddings is not None:
            if token_type_ids is not None:  # a cross-encoder's pair
                x = x + self.token_type_embeddings(token_type_ids)
            else:
                x = x + self.token_type_embeddings.weight[0]  # single segment: token type 0 everywhere
        return self.norm(x)


class SelfAttention(nn.Module):
    def __init__(self, config: GteConfig) -> None:
        super().__init__()
        H = config.hidden_size
        self.n_head = config.num_attention_heads
        self.pack_qkv = config.pack_qkv
        if self.pack_qkv:
            self.qkv = nn.Linear(H, 3 * H)
        else:
            self.q, self.k, self.v = nn.Linear(H, H), nn.Linear(H, H), nn.Linear(H, H)
        self.out = nn.Linear(H, H)

    def forward(
        self,
        x: torch.Tensor,
        attn: Attention,
        cos: torch.Tensor,
        sin: torch.Tensor,
        q_scale: torch.Tensor | None,
        first_only: bool = False,
    ) -> torch.Tensor:
        """x [..., T, H] -> [..., T, H]; `first_only` (padded rows [B, T, H]): only each row's first position
        attends (to every key) -> [B, 1, H]."""
        H = x.shape[-1]
        qkv = self.qkv(x).split(H, dim=-1) if self.pack_qkv else (self.q(x), self.k(x), self.v(x))  # [q | k | v]
        q, k, v = (t.unflatten(-1, (self.n_head, -1)) for t in qkv)  # [..., nh, d]
        k = apply_rope(k, cos, sin)
        if first_only:
            q, cos, sin = q[:, :1], cos[:, :1], sin[:, :1]
        q = apply_rope(q, cos, sin)
        if q_scale is not None:
            q = q * q_scale  # logn attention scale, one per row: [..., 1, 1]
        return self.out(attn(q, k, v).flatten(-2))


class GatedMLP(nn.Module):
    def __init__(self, config: GteConfig) -> None:
        super().__init__()
        self.up_gate = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, gate = self.up_gate(x).chunk(2, dim=-1)  # first half up, second half gate: [..., I] each
        return self.down(self.act(gate) * up)


class Layer(nn.Module):
    def __init__(self, config: GteConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(config)
        self.attn_norm = norm(config)
        self.mlp = GatedMLP(config)
        self.mlp_norm = norm(config)

    def forward(
        self, x: torch.Tensor, attn: Attention, cos: torch.Tensor, sin: torch.Tensor, q_scale: torch.Tensor | None
    ) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, attn, cos, sin, q_scale))  # post-norm, as published
        return self.mlp_norm(x + self.mlp(x))

    def forward_first(
        self, x: torch.Tensor, attn: Attention, cos: torch.Tensor, sin: torch.Tensor, q_scale: torch.Tensor | None
    ) -> torch.Tensor:
        """The layer's output at each padded row's first position only: x [B, T, H] -> [B, 1, H]."""
        first = self.attn_norm(x[:, :1] + self.attn(x, attn, cos, sin, q_scale, first_only=True))
        return self.mlp_norm(first + self.mlp(first))


class Gte(EncoderModel):
    learned_positions = False  # RoPE: any position can be computed

    def __init__(self, config: GteConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.rope = Rope(config.head_dim, config.rope_theta, config.rope_type, config.rope_factor, config.rope_mixed_b)

    def logn_scale(self, attn: Attention) -> torch.Tensor | None:
        """[..., 1, 1] log_{max_positions}(row length) query scale, per token, when logn_attention_scale is set."""
        if not self.config.logn_attention_scale:
            return None
        scale = attn.lengths.float().log() / math.log(self.config.max_position_embeddings)  # [B]
        if self.config.logn_attention_clip1:
            scale = scale.clamp(min=1.0)
        return attn.per_token(scale)[..., None, None]

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
        x, cos, sin, q_scale = self._inputs(input_ids, position_ids, attn, token_type_ids)
        for layer in self.layers:
            x = layer(x, attn, cos, sin, q_scale)
        return x

    def encode_first(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attn: Attention,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Padded rows [B, T] -> the first token's final state [B, H], as `encode(...)[:, 0]`, with the last
        layer's queries, output projection and MLP run for that position only: a sequence classifier
        (gte-multilingual-reranker) reads nothing else."""
        x, cos, sin, q_scale = self._inputs(input_ids, position_ids, attn, token_type_ids)
        for layer in self.layers[:-1]:
            x = layer(x, attn, cos, sin, q_scale)
        last: Layer = self.layers[-1]  # type: ignore[assignment]  # ModuleList indexes as Module
        return last.forward_first(x, attn, cos, sin, q_scale)[:, 0]

    def _inputs(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn: Attention, token_type_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The embedded tokens, the RoPE angles (once, shared by every layer) and the logn query scale."""
        x = self.embeddings(input_ids, token_type_ids)
        cos, sin = self.rope(position_ids, x.dtype)
        q_scale = self.logn_scale(attn)
        return x, cos, sin, None if q_scale is None else q_scale.to(x.dtype)


def build(config: dict, tensor_names: set[str], source: str) -> tuple[Gte, TensorLayout]:
    """The model (on whatever device is current) and tensor layout for a GTE ("new") checkpoint."""
    settings = {**config, **rope_settings(config)}
    return Gte(config_from_dict(GteConfig, settings, f"{source}/config.json")), LAYOUT


def sequence_classifier(config: dict, tensor_names: set[str], source: str) -> tuple[SequenceClassifier, TensorLayout]:
    """The encoder with its classification head and the layout of a `NewForSequenceClassification` checkpoint."""
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
