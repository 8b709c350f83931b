"""ModernBERT (gte-modernbert-base, modernbert-embed-base, gte-reranker-modernbert-base) in plain PyTorch.

A pre-LayerNorm encoder without absolute positions (Warner et al. 2024, "Smarter, Better, Faster, Longer"):
rotary embeddings on q and k, a fused `Wqkv`, a GeGLU MLP, no biases and LayerNorms without bias by
default, and attention that alternates between global layers and sliding-window local ones. It loads the
published tensor names (`embeddings.tok_embeddings`, `layers.N.attn.Wqkv`, `layers.N.mlp.Wi`,
`final_norm`, ..., under `model.` when saved from a `ModernBertFor*` head class, as the published
checkpoints are), so the module's attribute paths are the published names and the layout needs no renames.

Facts, from transformers 5.24 `models/modernbert` (`ModernBertModel`, `ModernBertConfig`) and the
original release (transformers 4.48's port of answerdotai/ModernBERT):

* layer i is global when i % global_attn_every_n_layers == 0 (config.json's published key; transformers 5
  writes the result as `layer_types`, "full_attention" / "sliding_attention"), so layer 0 is global;
* a local layer's query sees the keys within local_attention // 2 positions on either side
  (|i - j| <= local_attention / 2: `local_attention` is the total window width);
* RoPE (GPT-NeoX halves, full head dim) with theta `global_rope_theta` on global layers and
  `local_rope_theta` on local ones (transformers 5: `rope_parameters` per layer type);
* layer 0 has no attention norm (Identity, no tensors); every layer is x + attn(attn_norm(x)) then
  x + mlp(mlp_norm(x)); `final_norm` follows the last layer;
* MLP: `Wi` makes [input | gate], each `intermediate_size` wide, and the output is Wo(act(input) * gate):
  the activation (`hidden_activation`, exact GELU in every published config) is on the FIRST half.

`sequence_classifier` builds `ModernBertForSequenceClassification` (`head.dense`, activation, `head.norm`,
`classifier`) over the `classifier_pooling` pooled state ("cls": the first token; "mean": the mean of
the real tokens), the generalised head of `models/classifier.py`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from embedkit.errors import ModelLoadError
from embedkit.models.base import Attention, EncoderModel
from embedkit.models.classifier import (
    ClassificationHead,
    ClassifierNames,
    SequenceClassifier,
    build_sequence_classifier,
    num_labels,
)
from embedkit.models.layers import PaddedAttention, Rope, activation, apply_rope, varlen_attention, varlen_serves
from embedkit.models.loading import TensorLayout, check_heads, config_from_dict

__all__ = [
    "CLASSIFIER",
    "LAYOUT",
    "LocalAttention",
    "ModernBert",
    "ModernBertConfig",
    "build",
    "layer_kinds",
    "rope_thetas",
    "sequence_classifier",
]

log = logging.getLogger(__name__)

GLOBAL, LOCAL = "full_attention", "sliding_attention"  # transformers 5's layer-type names


@dataclass(frozen=True)
class ModernBertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_activation: str = "gelu"  # ModernBertConfig defaults from here on
    max_position_embeddings: int = 8192
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    local_attention: int = 128  # the total width of a local layer's window
    global_attn_every_n_layers: int = 3
    layer_types: tuple[str, ...] = ()  # normalised by `layer_kinds`
    global_rope_theta: float = 160000.0  # normalised by `rope_thetas` from either config form
    local_rope_theta: float = 10000.0
    classifier_pooling: str = "cls"
    classifier_bias: bool = False
    classifier_activation: str = "gelu"

    def __post_init__(self) -> None:
        check_heads(self.hidden_size, self.num_attention_heads)
        if len(self.layer_types) != self.num_hidden_layers or set(self.layer_types) - {GLOBAL, LOCAL}:
            raise ModelLoadError(
                f"config.json: layer_types {list(self.layer_types)} must name {GLOBAL!r} or {LOCAL!r} for each of "
                f"the {self.num_hidden_layers} layers"
            )
        if self.local_attention < 2 and LOCAL in self.layer_types:
            raise ModelLoadError(f"config.json: local_attention={self.local_attention} must be at least 2")
        if self.classifier_pooling not in ("cls", "mean"):
            raise ModelLoadError(
                f"config.json: classifier_pooling={self.classifier_pooling!r} is not supported ('cls' or 'mean')"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def window(self) -> int:
        """How far a local layer's query sees on either side: local_attention // 2 positions."""
        return self.local_attention // 2


def layer_kinds(config: dict[str, Any]) -> tuple[str, ...]:
    """Each layer's attention kind: `layer_types` (transformers 5) or every n-th layer global from layer 0."""
    given = config.get("layer_types")
    if isinstance(given, list):
        return tuple(str(kind) for kind in given)
    every = config.get("global_attn_every_n_layers", 3)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ModelLoadError(f"config.json: global_attn_every_n_layers={every!r}; expected a positive int")
    layers = config.get("num_hidden_layers")
    count = layers if isinstance(layers, int) else 0
    return tuple(GLOBAL if i % every == 0 else LOCAL for i in range(count))


def rope_thetas(config: dict[str, Any], source: str) -> dict[str, float]:
    """global_rope_theta / local_rope_theta from either config form.

    Published (transformers 4.48): `global_rope_theta`, `local_rope_theta`. transformers 5: `rope_parameters`
    {"full_attention": {"rope_type": "default", "rope_theta": t}, "sliding_attention": {...}}. Only the
    default (unscaled) RoPE is published for ModernBERT; another rope type is refused, naming it.
    """
    thetas: dict[str, float] = {}
    parameters = config.get("rope_parameters")
    if isinstance(parameters, dict) and (GLOBAL in parameters or LOCAL in parameters):
        for kind, key in ((GLOBAL, "global_rope_theta"), (LOCAL, "local_rope_theta")):
            entry = parameters.get(kind) or {}
            rope_type = entry.get("rope_type", entry.get("type", "default"))
            if rope_type != "default":
                raise ModelLoadError(
                    f"{source}: rope_parameters[{kind!r}] has rope_type {rope_type!r}; ModernBERT is supported "
                    "with the default RoPE only"
                )
            if entry.get("rope_theta") is not None:
                thetas[key] = float(entry["rope_theta"])
        return thetas
    scaling = config.get("rope_scaling")
    if scaling:
        raise ModelLoadError(f"{source}: rope_scaling={scaling!r}; ModernBERT is supported with the default RoPE only")
    if config.get("global_rope_theta") is not None:
        thetas["global_rope_theta"] = float(config["global_rope_theta"])
    if "local_rope_theta" in config and config["local_rope_theta"] is None:
        # the original ModernBERT code: local layers use the global theta when local_rope_theta is null
        log.info("%s: local_rope_theta is null, so local layers use global_rope_theta", source)
        thetas["local_rope_theta"] = thetas.get("global_rope_theta", ModernBertConfig.global_rope_theta)
    elif config.get("local_rope_theta") is not None:
        thetas["local_rope_theta"] = float(config["local_rope_theta"])
    return thetas


# The published names (after the prefix) are the module's attribute paths: nothing to rename.
LAYOUT = TensorLayout(
    anchor="embeddings.tok_embeddings.weight",
    prefixes=("model.", ""),  # `model.` as ModernBertFor* saves it (the published checkpoints), bare as ModernBertModel
    # a ModernBertFor* class's own layers sit beside `model.`: the MLM head (`head`, `decoder`), a classifier
    ignore=(r"head\..*", r"decoder\..*", r"classifier\..*"),
)

# ModernBertForSequenceClassification (gte-reranker-modernbert-base): ModernBertPredictionHead
# (`head.dense`, activation, `head.norm`) over the pooled state, then `classifier`, beside `model.`
CLASSIFIER = ClassifierNames(encoder_prefix="model.", dense="head.dense.", out="classifier.", norm="head.norm.")


def norm(config: ModernBertConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)


class LocalAttention:
    """A local layer's attention: the forward's attention (padded or packed) with each query limited to the
    keys within `window` positions on either side of it. Built once per forward, shared by the local layers.

    Padded: the key mask [B, 1, 1, T] becomes [B, 1, T, T] with the band |i - j| <= window (column
    distance is position distance on either padding side). Each query also sees itself, so that a padding
    query far from every real key still has one key: a query with none gives NaN on some SDPA backends,
    which would reach real tokens as 0 * NaN in the next layer. Packed: the varlen kernel's own window
    where it serves, else the same pad -> band-masked attention -> unpad stand-in.
    """

    def __init__(self, attn: Attention, window: int) -> None:
        self.attn = attn
        self.window = window

    @functools.cached_property
    def padded(self) -> PaddedAttention:
        """The band-masked padded attention, built at the first local layer that needs it."""
        attn = self.attn
        outer = attn if isinstance(attn, PaddedAttention) else attn.padded_attention
        mask = outer.attention_mask  # [B, T] bool
        columns = torch.arange(mask.shape[1], device=mask.device)
        distance = (columns[None, :] - columns[:, None]).abs()  # [T, T]
        local = PaddedAttention(mask)
        local.mask = (outer.mask & (distance <= self.window)) | (distance == 0)  # [B, 1, T, T]
        return local

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v [B, T, nh, d] or [N, nh, d] (the layout of the wrapped attention) -> the same shape."""
        attn = self.attn
        if isinstance(attn, PaddedAttention):
            return self.padded(q, k, v)
        if varlen_serves(q):
            return varlen_attention(q, k, v, attn.cu_seqlens, attn.max_length, causal=False, window=self.window)
        return attn.unpad(self.padded(attn.pad(q), attn.pad(k), attn.pad(v)))


class Embeddings(nn.Module):
    def __init__(self, config: ModernBertConfig) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.norm = norm(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.tok_embeddings(input_ids))  # [..., H]; no absolute positions, no token types


class SelfAttention(nn.Module):
    def __init__(self, config: ModernBertConfig) -> None:
        super().__init__()
        H = config.hidden_size
        self.n_head = config.num_attention_heads
        self.Wqkv = nn.Linear(H, 3 * H, bias=config.attention_bias)
        self.Wo = nn.Linear(H, H, bias=config.attention_bias)

    def forward(
        self, x: torch.Tensor, attn: Attention | LocalAttention, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        qkv = self.Wqkv(x).split(x.shape[-1], dim=-1)  # [q | k | v], [..., H] each
        q, k, v = (t.unflatten(-1, (self.n_head, -1)) for t in qkv)  # [..., nh, d]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.Wo(attn(q, k, v).flatten(-2))


class GeGLU(nn.Module):
    def __init__(self, config: ModernBertConfig) -> None:
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act = activation(config.hidden_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs, gate = self.Wi(x).chunk(2, dim=-1)  # first half the input, second half the gate: [..., I] each
        return self.Wo(self.act(inputs) * gate)


class Layer(nn.Module):
    def __init__(self, config: ModernBertConfig, index: int) -> None:
        super().__init__()
        # the embeddings' norm precedes layer 0, so its attention reads them as they are (no tensors)
        self.attn_norm: nn.Module = nn.Identity() if index == 0 else norm(config)
        self.attn = SelfAttention(config)
        self.mlp_norm = norm(config)
        self.mlp = GeGLU(config)
        self.local = config.layer_types[index] == LOCAL

    def forward(
        self, x: torch.Tensor, attn: Attention | LocalAttention, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), attn, cos, sin)  # pre-norm
        return x + self.mlp(self.mlp_norm(x))


class ModernBert(EncoderModel):
    learned_positions = False  # RoPE: any position can be computed

    def __init__(self, config: ModernBertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = norm(config)
        self.global_rope = Rope(config.head_dim, config.global_rope_theta)
        self.local_rope = Rope(config.head_dim, config.local_rope_theta)

    @property
    def token_types(self) -> int:
        """ModernBERT reads no segment ids (a cross-encoder's pair is told apart by its [SEP] only)."""
        return 0

    def encode(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attn: Attention,
        adapters: torch.Tensor | None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, position_ids [B, T] or [N] -> token states [B, T, H] or [N, H]; token_type_ids unused."""
        x = self.embeddings(input_ids)
        # once per forward, shared by the layers of each kind
        global_rope = self.global_rope(position_ids, x.dtype)  # cos, sin [..., 1, d]
        local_rope = self.local_rope(position_ids, x.dtype)
        local = LocalAttention(attn, self.config.window) if LOCAL in self.config.layer_types else None
        for layer in self.layers:
            if layer.local and local is not None:
                x = layer(x, local, *local_rope)
            else:
                x = layer(x, attn, *global_rope)
        return self.final_norm(x)


def _config(config: dict, source: str) -> ModernBertConfig:
    settings = {**config, **rope_thetas(config, source), "layer_types": layer_kinds(config)}
    return config_from_dict(ModernBertConfig, settings, f"{source}/config.json")


def build(config: dict, tensor_names: set[str], source: str) -> tuple[ModernBert, TensorLayout]:
    """The model (on whatever device is current) and tensor layout for a ModernBERT checkpoint."""
    return ModernBert(_config(config, source)), LAYOUT


def sequence_classifier(config: dict, tensor_names: set[str], source: str) -> tuple[SequenceClassifier, TensorLayout]:
    """The encoder with ModernBertForSequenceClassification's head, and the layout of such a checkpoint."""
    settings = _config(config, source)
    encoder = ModernBert(settings)
    H = settings.hidden_size
    head = ClassificationHead(
        H,
        num_labels(config, source),
        activation=activation(settings.classifier_activation),
        dense_bias=settings.classifier_bias,
        norm=norm(settings),
        pooling=settings.classifier_pooling,
    )
    return build_sequence_classifier(
        encoder,
        LAYOUT,
        CLASSIFIER,
        config=config,
        hidden_size=H,
        tensor_names=tensor_names,
        source=source,
        head=head,
    )
