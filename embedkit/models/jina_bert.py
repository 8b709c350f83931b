"""JinaBERT v2 (jina-embeddings-v2-base-en/-small-en/-base-de/..., -base-code) in plain PyTorch.

A post-LayerNorm BERT with three changes (Günther et al. 2023, "Jina Embeddings 2"; remote code
`jinaai/jina-bert-implementation`):

* no position embeddings: every attention head adds a symmetric ALiBi bias `-slope_h * |i - j|`
  to its scaled scores (Press et al. 2021, bidirectional form), so the model reads 8192 tokens;
* a GLU feed-forward: one bias-free [2I, H] projection split into a gated half (GELU for "geglu",
  ReLU for "reglu") and a linear half, multiplied, then projected back to H;
* BERT's token-type table, used with type 0 only (single segment).

Two on-disk layouts, told apart by their tensor names:

* plain (v2-base-en and friends): `mlp.gated_layers` ([gated | linear]), `mlp.wo`, `mlp.layernorm`;
* qk-post-norm (v2-base-code, `jinaai/jina-bert-v2-qk-post-norm`): LayerNorms on q and k over the
  whole hidden vector before the head split, `mlp.up_gated_layer` ([linear | gated], the other
  order), `mlp.down_layer`, and two layer-level norms `layer_norm_1` (after the attention block's own
  `attention.output.LayerNorm`) and `layer_norm_2` (after the MLP), as in Text Embeddings
  Inference's `jina_code.rs` and `backends/python/.../jinaBert_model.py`.

The GLU halves, the exact-erf GELU (`nn.GELU()` for "geglu", whatever `hidden_act` says) and the
ALiBi slopes follow those sources; golden vectors from the original code pin them (tests/models/test_jina_bert.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from embedkit.errors import ModelLoadError
from embedkit.models import bert
from embedkit.models.base import Attention, EncoderModel
from embedkit.models.layers import activation, alibi_slopes
from embedkit.models.loading import TensorLayout, check_heads, config_from_dict

__all__ = ["CODE_LAYOUT", "LAYOUT", "JinaBert", "JinaBertConfig", "build"]

# the activation on the gated half, by config.json's feed_forward_type (the remote code ignores hidden_act)
_GLU_ACTIVATIONS = {"geglu": "gelu", "reglu": "relu"}


@dataclass(frozen=True)
class JinaBertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    feed_forward_type: str = "geglu"
    max_position_embeddings: int = 8192  # no learned positions: only a limit on the input length
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    qk_post_norm: bool = False  # the v2-base-code layout; set from the tensor names, not config.json

    def __post_init__(self) -> None:
        check_heads(self.hidden_size, self.num_attention_heads)
        if self.feed_forward_type not in _GLU_ACTIVATIONS:
            raise ModelLoadError(
                f"config.json: feed_forward_type={self.feed_forward_type!r} is not supported for JinaBERT; "
                f"supported: {', '.join(_GLU_ACTIVATIONS)}"
            )


# Published name (after the prefix) -> attribute path in `JinaBert`, plain v2 layout: BERT's
# embeddings and attention groups, its own GLU feed-forward.
LAYOUT = replace(
    bert.LAYOUT,
    renames={
        "embeddings": bert.EMBEDDINGS_RENAMES,
        "attention": bert.ATTENTION_RENAMES,
        "mlp": (
            ("encoder.layer.{n}.mlp.gated_layers.", "layers.{n}.mlp.up_gate."),
            ("encoder.layer.{n}.mlp.wo.", "layers.{n}.mlp.down."),
            ("encoder.layer.{n}.mlp.layernorm.", "layers.{n}.mlp_norm."),
        ),
    },
)

# The qk-post-norm (v2-base-code) layout: same embeddings and attention projections, its own MLP and norms.
CODE_LAYOUT = replace(
    LAYOUT,
    renames={
        "embeddings": bert.EMBEDDINGS_RENAMES,
        "attention": (
            *bert.ATTENTION_RENAMES,
            ("encoder.layer.{n}.attention.self.layer_norm_q.", "layers.{n}.attn.q_norm."),
            ("encoder.layer.{n}.attention.self.layer_norm_k.", "layers.{n}.attn.k_norm."),
            ("encoder.layer.{n}.layer_norm_1.", "layers.{n}.post_attn_norm."),
        ),
        "mlp": (
            ("encoder.layer.{n}.mlp.up_gated_layer.", "layers.{n}.mlp.up_gate."),
            ("encoder.layer.{n}.mlp.down_layer.", "layers.{n}.mlp.down."),
            ("encoder.layer.{n}.layer_norm_2.", "layers.{n}.mlp_norm."),
        ),
    },
)

# a tensor only the qk-post-norm layout has (either one is enough, so a checkpoint missing the other
# still gets the right layout and an error naming what is missing)
_CODE_LAYOUT_SIGNS = ("attention.self.layer_norm_q.weight", "mlp.up_gated_layer.weight")


class Embeddings(nn.Module):
    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # no position embedding (ALiBi); single segment: token type 0 everywhere
        return self.norm(self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0])


class SelfAttention(nn.Module):
    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__()
        H = config.hidden_size
        self.n_head = config.num_attention_heads
        self.query = nn.Linear(H, H)
        self.key = nn.Linear(H, H)
        self.value = nn.Linear(H, H)
        self.out = nn.Linear(H, H)
        if config.qk_post_norm:  # over the whole hidden vector, before the split into heads
            self.q_norm: nn.Module = nn.LayerNorm(H, eps=config.layer_norm_eps)
            self.k_norm: nn.Module = nn.LayerNorm(H, eps=config.layer_norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def forward(self, x: torch.Tensor, attn: Attention) -> torch.Tensor:
        q, k, v = self.q_norm(self.query(x)), self.k_norm(self.key(x)), self.value(x)  # [..., H]
        q, k, v = (t.unflatten(-1, (self.n_head, -1)) for t in (q, k, v))  # [..., nh, d]
        y = attn(q, k, v)  # softmax(q k^T / sqrt(d) + ALiBi) v: [..., nh, d]
        return self.out(y.flatten(-2))


class GluFeedForward(nn.Module):
    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__()
        self.up_gate = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(_GLU_ACTIVATIONS[config.feed_forward_type])
        self.gate_first = not config.qk_post_norm  # plain: [gated | linear]; code layout: [linear | gated]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self.up_gate(x).chunk(2, dim=-1)  # [..., I] each
        gated, linear = (first, second) if self.gate_first else (second, first)
        return self.down(self.act(gated) * linear)


class Layer(nn.Module):
    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__()
        H, eps = config.hidden_size, config.layer_norm_eps
        self.attn = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(H, eps=eps)
        # code layout only: a second norm over (input + normed attention block output)
        self.post_attn_norm = nn.LayerNorm(H, eps=eps) if config.qk_post_norm else None
        self.mlp = GluFeedForward(config)
        self.mlp_norm = nn.LayerNorm(H, eps=eps)

    def forward(self, x: torch.Tensor, attn: Attention) -> torch.Tensor:
        a = self.attn_norm(x + self.attn(x, attn))  # post-norm, as published
        x = a if self.post_attn_norm is None else self.post_attn_norm(x + a)
        return self.mlp_norm(x + self.mlp(x))


class JinaBert(EncoderModel):
    learned_positions = False  # ALiBi: a distance bias, no position table

    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        # per-head slopes: the shared attention adds -slope_h * |i - j| to the scores
        self.alibi: tuple[float, ...] | None = tuple(alibi_slopes(config.num_attention_heads))

    def encode(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn: Attention, adapters: torch.Tensor | None
    ) -> torch.Tensor:
        """input_ids [B, T] or [N] -> token states [B, T, H] or [N, H]; positions enter through ALiBi."""
        x = self.embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, attn)
        return x


def _is_code_layout(config: dict, tensor_names: set[str]) -> bool:
    if tensor_names:
        return any(name.endswith(sign) for name in tensor_names for sign in _CODE_LAYOUT_SIGNS)
    # pickled weights: no names before loading; the config's auto_map is the only hint (a wrong
    # guess still fails in assign_weights, naming the tensors)
    auto_map = config.get("auto_map")
    return isinstance(auto_map, dict) and any("qk-post-norm" in str(v) for v in auto_map.values())


def build(config: dict, tensor_names: set[str], source: str) -> tuple[JinaBert, TensorLayout]:
    """The model (on whatever device is current) and tensor layout for a JinaBERT v2 checkpoint."""
    position_type = config.get("position_embedding_type", "alibi")
    if position_type != "alibi":
        raise ModelLoadError(
            f"{source}/config.json: position_embedding_type={position_type!r}; JinaBERT is supported with 'alibi' only"
        )
    code = _is_code_layout(config, tensor_names)
    settings = {**config, "qk_post_norm": code}
    model = JinaBert(config_from_dict(JinaBertConfig, settings, f"{source}/config.json"))
    return model, CODE_LAYOUT if code else LAYOUT
