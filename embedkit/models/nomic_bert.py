"""NomicBERT (nomic-embed-text-v1 / v1.5, remote code `nomic-ai/nomic-bert-2048`) in plain PyTorch.

A post-LayerNorm BERT without absolute positions, from flash-attn's BERT by way of nomic's
`modeling_hf_nomic_bert.py` (Nussbaum et al. 2024, "Nomic Embed"):

* embeddings: word + token type 0, then `emb_ln` (a top-level LayerNorm, not `embeddings.LayerNorm`);
* attention: one fused `attn.Wqkv` whose output rows are [q | k | v] (heads contiguous in each part),
  rotary embeddings on q and k (GPT-NeoX `rotate_half`, the full head dim, base `rotary_emb_base`,
  1000 in the published configs), softmax(q k^T / sqrt(d)) v, then `attn.out_proj`;
* a gated MLP: fc2(fc11(x) * act(fc12(x))), the activation on fc12 (SwiGLU: SiLU). The remote
  code's `NomciBertGatedMLP.forward` is `y = fc11(x); gate = fc12(x); y * activation(gate)`, and
  transformers' conversion mapping agrees (fc11 -> up_proj, fc12 -> gate_proj);
* post-norm blocks: x = norm1(x + attn(x)); x = norm2(x + mlp(x)); no final norm after the last block.

The config is GPT-2's (`NomicBertConfig(GPT2Config)`): `n_embd`, `n_layer`, `n_head`, `n_inner`,
`n_positions`, `layer_norm_epsilon`, `activation_function` ("swiglu"). Newer copies of the published
config.json also carry transformers 5's names (`hidden_size`, `layer_norm_eps`, `rope_parameters`);
either is read, and the two must agree. The linear layers' biases follow `qkv_proj_bias` (Wqkv and
out_proj), `mlp_fc1_bias` (fc11, fc12) and `mlp_fc2_bias` (fc2): all false in the published configs.

Options no published embedding checkpoint uses are refused by name rather than approximated:
pre-norm, parallel blocks, RMSNorm, causal attention, partial / interleaved / xPos rotary, an
ungated MLP, MoE layers (nomic-embed-text-v2-moe), grouped KV heads, and `rotary_scaling_factor`
(the remote code's dynamic NTK, whose base depends on the longest row of the padded batch, so a
text's vector would depend on what it is batched with; v1.5 publishes it as null and the model card
only sets it as a `from_pretrained` argument).

Pooling is mean (the published 1_Pooling/config.json; modules.json has no Normalize). Prompts: the
model card's task prefixes (`default_prompts`, for checkpoints whose config_sentence_transformers.json
lists none). Matryoshka (v1.5: 768/512/256/128/64) goes through embedkit's one postprocess, cut then
L2-normalise, as sentence-transformers' `truncate_dim` and TEI do; the model card's own recipe
centres and scales the pooled vector first (`F.layer_norm(x, (768,))`, no weights) and then cuts and
normalises, which the published sentence-transformers files do not record, so it is not applied here.

Sources: `configuration_hf_nomic_bert.py` / `modeling_hf_nomic_bert.py` (nomic-ai/contrastors
`src/contrastors/models/huggingface/`, the code the hub's nomic-bert-2048 serves); transformers 5
`models/nomic_bert` and its `conversion_mapping.py` entry; checked against transformers' native
`NomicBertModel` (tests/models/test_nomic_bert.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.errors import ModelLoadError
from embedkit.models.base import Attention, EncoderModel
from embedkit.models.layers import Rope, apply_rope
from embedkit.models.loading import TensorLayout, check_heads, config_from_dict

__all__ = ["LAYOUT", "TASK_PREFIXES", "NomicBert", "NomicBertConfig", "build", "default_prompts"]

log = logging.getLogger(__name__)

# The model card's "Task instruction prefixes" (nomic-embed-text-v1 and v1.5): plain text before the input.
TASK_PREFIXES = {
    "search_query": "search_query: ",
    "search_document": "search_document: ",
    "classification": "classification: ",
    "clustering": "clustering: ",
}

# activation_function -> the gate's activation (NomicBertBlock: "glu" sigmoid, "swiglu" SiLU, else exact GELU)
_GATED: dict[str, Any] = {"swiglu": F.silu, "geglu": F.gelu, "glu": torch.sigmoid}

# the remote config's GPT-2 key -> our field, which is also transformers 5's name for the same value
_KEYS = {
    "n_embd": "hidden_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_inner": "intermediate_size",
    "layer_norm_epsilon": "layer_norm_eps",
}


@dataclass(frozen=True)
class NomicBertConfig:
    vocab_size: int  # after rounding up to pad_vocab_size_multiple, as the remote NomicBertModel does
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    rotary_emb_base: float
    # NomicBertConfig / GPT2Config defaults from here on (the published configs set every one)
    max_position_embeddings: int = 1024
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-5
    activation_function: str = "gelu_new"
    rotary_emb_fraction: float = 0.0
    rotary_emb_interleaved: bool = False
    rotary_emb_scale_base: float | None = None
    rotary_scaling_factor: float | None = None
    qkv_proj_bias: bool = True
    mlp_fc1_bias: bool = True
    mlp_fc2_bias: bool = True
    prenorm: bool = False
    parallel_block: bool = False
    use_rms_norm: bool = False
    causal: bool = False
    num_heads_kv: int | None = None

    def __post_init__(self) -> None:
        check_heads(self.hidden_size, self.num_attention_heads)
        refused = {
            "prenorm": self.prenorm,
            "parallel_block": self.parallel_block,
            "use_rms_norm": self.use_rms_norm,
            "causal": self.causal,
            "rotary_emb_interleaved": self.rotary_emb_interleaved,
        }
        for key, value in refused.items():
            if value:
                raise ModelLoadError(f"config.json: {key}=true is not supported for NomicBERT (published: false)")
        if self.activation_function not in _GATED:
            raise ModelLoadError(
                f"config.json: activation_function={self.activation_function!r} is not supported for NomicBERT; "
                f"only the gated MLPs ({', '.join(_GATED)}; nomic-embed-text-v1/v1.5 use 'swiglu')"
            )
        if self.rotary_emb_fraction != 1.0:
            raise ModelLoadError(
                f"config.json: rotary_emb_fraction={self.rotary_emb_fraction} is not supported; only 1.0 "
                "(rotary over the full head dim, as published)"
            )
        if self.rotary_emb_scale_base is not None:
            raise ModelLoadError("config.json: rotary_emb_scale_base is set (xPos), which is not supported")
        if self.rotary_scaling_factor:
            raise ModelLoadError(
                f"config.json: rotary_scaling_factor={self.rotary_scaling_factor} (the remote code's dynamic NTK "
                "RoPE) is not supported: its base grows with the longest row of the padded batch, so a text's "
                "vector would depend on its batch. nomic-embed-text-v1.5 publishes it as null; set it to null"
            )
        if self.num_heads_kv not in (None, self.num_attention_heads):
            raise ModelLoadError(
                f"config.json: num_heads_kv={self.num_heads_kv} (grouped KV heads) is not supported; "
                f"only {self.num_attention_heads}, one per query head"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def settings(config: dict[str, Any], source: str) -> dict[str, Any]:
    """config.json -> NomicBertConfig fields: GPT-2 names or transformers 5's, vocabulary padding, the
    inner size and the RoPE base resolved as the remote code resolves them."""
    refused = {key: config.get(key) for key in ("moe_every_n_layers", "num_experts") if config.get(key)}
    if refused:
        found = ", ".join(f"{key}={value}" for key, value in refused.items())
        raise ModelLoadError(
            f"{source}: {found}: mixture-of-experts NomicBERT (nomic-embed-text-v2-moe) is not supported"
        )
    if config.get("norm_mlp"):
        raise ModelLoadError(f"{source}: norm_mlp=true (a norm inside the MLP) is not supported for NomicBERT")
    out = dict(config)
    for gpt2, field in _KEYS.items():
        ours, theirs = config.get(gpt2), config.get(field)
        if ours is not None and theirs is not None and ours != theirs:
            raise ModelLoadError(f"{source}: {gpt2}={ours!r} and {field}={theirs!r} disagree")
        out[field] = ours if ours is not None else theirs
    # positions: a soft limit under RoPE. The published v1.5 config.json has transformers 5's
    # max_position_embeddings 2048 (the trained length) beside the remote code's n_positions 8192;
    # n_positions is what the remote code reads
    positions = config.get("n_positions", config.get("max_position_embeddings"))
    out["max_position_embeddings"] = positions
    if isinstance(positions, int) and positions <= 0:
        out["max_position_embeddings"] = 2048  # NomicBertPreTrainedModel.from_pretrained does the same with RoPE
    hidden = out.get("hidden_size")
    if out.get("intermediate_size") is None and isinstance(hidden, int):
        # NomciBertGatedMLP: hidden_features = int(8 * n_embd / 3) rounded up to a multiple of 256
        out["intermediate_size"] = math.ceil(int(8 * hidden / 3) / 256) * 256
        log.info("%s: n_inner is not set; the gated MLP's default %d", source, out["intermediate_size"])
    multiple = int(config.get("pad_vocab_size_multiple") or 1)
    if isinstance(config.get("vocab_size"), int) and multiple > 1:
        out["vocab_size"] = math.ceil(config["vocab_size"] / multiple) * multiple
    out["rotary_emb_base"] = rotary_base(config, source)
    return out


def rotary_base(config: dict[str, Any], source: str) -> float:
    """`rotary_emb_base` (remote code) or `rope_parameters.rope_theta` / `rope_theta` (transformers 5).

    Required: the remote config class's default changed between its versions (10000 and 1000), so a
    config without it does not say which base its weights were trained with.
    """
    parameters = config.get("rope_parameters") or {}
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    if rope_type != "default":
        raise ModelLoadError(f"{source}: rope_parameters rope_type={rope_type!r} is not supported (only 'default')")
    values = {
        key: float(value)
        for key, value in (
            ("rotary_emb_base", config.get("rotary_emb_base")),
            ("rope_theta", config.get("rope_theta")),
            ("rope_parameters.rope_theta", parameters.get("rope_theta")),
        )
        if value is not None
    }
    if not values:
        raise ModelLoadError(f"{source}: config.json sets no rotary_emb_base (nor rope_theta); NomicBERT needs it")
    if len(set(values.values())) > 1:
        raise ModelLoadError(f"{source}: the RoPE bases disagree: {values}")
    return next(iter(values.values()))


def default_prompts(config: dict[str, Any]) -> dict[str, str]:
    """The model card's task prefixes, for checkpoints whose config_sentence_transformers.json has no prompts
    (nomic-embed-text-v1.5's holds only `__version__`); `query` / `document` reach them through tasks.ALIASES."""
    return dict(TASK_PREFIXES)


# The published names are the module paths below; `bert.` when saved from NomicBertForPreTraining,
# whose `cls.` MLM head (and any pooler) is not part of the embedding.
LAYOUT = TensorLayout(
    anchor="embeddings.word_embeddings.weight",
    prefixes=("", "bert."),
    ignore=(r"pooler\..*", r"cls\..*", r"embeddings\.position_ids"),
)


class Embeddings(nn.Module):
    def __init__(self, config: NomicBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size > 0 else None
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(input_ids)  # [..., H]; no absolute positions (RoPE)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings.weight[0]  # a single segment: token type 0 everywhere
        return x


class SelfAttention(nn.Module):
    def __init__(self, config: NomicBertConfig) -> None:
        super().__init__()
        H = config.hidden_size
        self.n_head = config.num_attention_heads
        self.Wqkv = nn.Linear(H, 3 * H, bias=config.qkv_proj_bias)
        self.out_proj = nn.Linear(H, H, bias=config.qkv_proj_bias)  # the remote code ties both to qkv_proj_bias

    def forward(self, x: torch.Tensor, attn: Attention, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.unflatten(-1, (self.n_head, -1)) for t in self.Wqkv(x).chunk(3, dim=-1))  # [..., nh, d]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.out_proj(attn(q, k, v).flatten(-2))


class GatedMLP(nn.Module):
    def __init__(self, config: NomicBertConfig) -> None:
        super().__init__()
        H, inner = config.hidden_size, config.intermediate_size
        self.fc11 = nn.Linear(H, inner, bias=config.mlp_fc1_bias)  # the value path
        self.fc12 = nn.Linear(H, inner, bias=config.mlp_fc1_bias)  # the gate: the activation applies here
        self.fc2 = nn.Linear(inner, H, bias=config.mlp_fc2_bias)
        self.act = _GATED[config.activation_function]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc11(x) * self.act(self.fc12(x)))  # [..., H]


class Block(nn.Module):
    def __init__(self, config: NomicBertConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(config)
        self.mlp = GatedMLP(config)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, attn: Attention, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x, attn, cos, sin))  # post-norm (prenorm false)
        return self.norm2(x + self.mlp(x))


class Encoder(nn.Module):
    def __init__(self, config: NomicBertConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))


class NomicBert(EncoderModel):
    learned_positions = False  # RoPE: any position can be computed

    def __init__(self, config: NomicBertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.emb_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = Encoder(config)
        self.rope = Rope(config.head_dim, config.rotary_emb_base)

    def encode(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn: Attention, adapters: torch.Tensor | None
    ) -> torch.Tensor:
        """input_ids, position_ids [B, T] or [N] -> token states [B, T, H] or [N, H]."""
        x = self.emb_ln(self.embeddings(input_ids))
        cos, sin = self.rope(position_ids, x.dtype)  # once, shared by every layer
        for layer in self.encoder.layers:
            x = layer(x, attn, cos, sin)
        return x


def build(config: dict, tensor_names: set[str], source: str) -> tuple[NomicBert, TensorLayout]:
    """The model (on whatever device is current) and tensor layout for a NomicBERT checkpoint."""
    path = f"{source}/config.json"
    return NomicBert(config_from_dict(NomicBertConfig, settings(config, path), path)), LAYOUT
