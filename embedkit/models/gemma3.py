"""Gemma3 text encoders (EmbeddingGemma, google/embeddinggemma-300m) in plain PyTorch.

A pre-norm decoder stack run bidirectionally (`use_bidirectional_attention: true`), with Gemma's
particulars:

* Embeddings are multiplied by sqrt(hidden_size), the factor first rounded to the embedding dtype
  (in bf16 sqrt(768) = 27.71 becomes 27.75), as transformers' Gemma3TextScaledWordEmbedding.
* RMSNorm scales by (1 + weight), computed in fp32 and cast back after the product
  (`Gemma3RMSNorm`); four of them per layer: input_layernorm, post_attention_layernorm (on the
  attention output, before the residual), pre_feedforward_layernorm, post_feedforward_layernorm.
* Attention is grouped-query (`num_key_value_heads`), head_dim explicit (256), q and k pass a
  per-head RMSNorm (`q_norm`, `k_norm`) before RoPE; scores are scaled by
  query_pre_attn_scalar ** -0.5 (not head_dim ** -0.5; the two agree for EmbeddingGemma). No
  logit soft-capping (Gemma2 had it; a config that sets attn_logit_softcapping is refused).
* Layers are of two kinds, `layer_types` ("sliding_attention" / "full_attention", or every
  `sliding_window_pattern`-th layer global, 6 by default). Global layers see every real token and
  use RoPE base `rope_theta` (1e6); sliding layers use `rope_local_base_freq` (1e4) and a
  symmetric window. The window, exactly as transformers 5.24 builds it for the bidirectional
  variant: Gemma3TextConfig turns config.json's sliding_window W into W // 2 + 1 and the mask keeps
  |i - j| < W // 2 + 1, i.e. each token sees W // 2 tokens on either side (256 for W = 512), by
  index within its row.
* The MLP is GeGLU, down(gelu_tanh(gate(x)) * up(x)) (`hidden_activation` gelu_pytorch_tanh).

Tensor names are the published ones (`embed_tokens`, `layers.N.self_attn.q_proj`, `q_norm`,
`pre_feedforward_layernorm`, `mlp.gate_proj`, `norm`), unprefixed as EmbeddingGemma's
model.safetensors holds them (saved from Gemma3TextModel), or under `model.` (Gemma3ForCausalLM
saves). Pooling (mean) and the two Dense projections 768 -> 3072 -> 768 are the
sentence-transformers pipeline's (models/st_files.py, models/dense.py).

A causal Gemma3 (use_bidirectional_attention false or absent: the Gemma 3 language models) is
refused: it is a generator, not an encoder, and no published embedder uses it so.

Sources: transformers 5.24 `models/gemma3/modeling_gemma3.py` (Gemma3TextModel, Gemma3Attention,
`_bidirectional_window_overlay`), `configuration_gemma3.py` (Gemma3TextConfig.__post_init__,
convert_rope_params_to_dict); google/embeddinggemma-300m config.json and modules.json; checked
against transformers' Gemma3TextModel and SentenceTransformer in tests/models/test_gemma3.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer, processors
from torch import nn

from embedkit.errors import ModelLoadError
from embedkit.models import base
from embedkit.models.layers import PackedAttention, PaddedAttention, Rope, activation, apply_rope
from embedkit.models.loading import TensorLayout, config_from_dict

__all__ = ["LAYOUT", "Gemma3", "Gemma3Config", "build", "prepare_tokenizer", "sliding_radius"]

log = logging.getLogger(__name__)

SLIDING, FULL = "sliding_attention", "full_attention"
DEFAULT_PATTERN = 6  # Gemma3TextConfig's sliding_window_pattern when config.json has no layer_types

# one attention call: q [..., nh, d], k, v [..., n_kv, d] -> [..., nh, d]
AttentionCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Gemma3Config:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_key_value_heads: int  # build() fills it in (num_attention_heads when absent)
    layer_types: tuple[str, ...]  # build() fills it in
    sliding_window: int  # config.json's W; a sliding layer sees W // 2 tokens each side
    head_dim: int = 256  # Gemma3TextConfig's defaults from here on
    query_pre_attn_scalar: float = 256
    hidden_activation: str = "gelu_pytorch_tanh"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0  # full-attention layers
    rope_local_base_freq: float = 10_000.0  # sliding layers
    rope_linear_factor: float = 1.0  # linear RoPE scaling of the full-attention layers (Gemma 3 4B+)
    attention_bias: bool = False
    max_position_embeddings: int = 131_072

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelLoadError(
                f"config.json: num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if len(self.layer_types) != self.num_hidden_layers:
            raise ModelLoadError(
                f"config.json: layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers"
            )
        unknown = sorted(set(self.layer_types) - {SLIDING, FULL})
        if unknown:
            raise ModelLoadError(f"config.json: unknown layer_types {unknown}; known: {SLIDING}, {FULL}")
        if self.sliding_window < 1:
            raise ModelLoadError(f"config.json: sliding_window {self.sliding_window} must be positive")


LAYOUT = TensorLayout(
    anchor="embed_tokens.weight",
    prefixes=("", "model."),
    ignore=(r"lm_head\..*", r"rotary_emb\..*", r"layers\.\d+\.self_attn\.rotary_emb\..*"),
)


def sliding_radius(sliding_window: int) -> int:
    """Tokens a sliding layer sees on EACH side of a token, from config.json's sliding_window W.

    transformers (5.24) stores W // 2 + 1 for the bidirectional Gemma3 ("exclusive bounds") and keeps
    key j for query i when |i - j| < W // 2 + 1: the radius is W // 2 (256 for EmbeddingGemma's 512).
    """
    return sliding_window // 2


class GemmaRMSNorm(nn.Module):
    """x / rms(x) * (1 + weight), all in fp32, cast back to x's dtype at the end (Gemma3RMSNorm)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).to(x.dtype)


def _band(length: int, radius: int, device: torch.device) -> torch.Tensor:
    """[T, T] bool: key j visible from query i when |i - j| <= radius (indices within the row)."""
    index = torch.arange(length, device=device)
    return (index[:, None] - index[None, :]).abs() <= radius


def _windowed(keys: torch.Tensor, radius: int) -> torch.Tensor:
    """The padding mask [B, 1, 1, T] ANDed with the band -> [B, 1, T, T], each query also seeing itself.

    A padding query further than `radius` from every real token would otherwise see no key at all, which
    SDPA backends answer differently (zeros on the CPU math path, NaN elsewhere), and a NaN padding state
    reaches real tokens through 0 * NaN in the next layer's attention. Real queries see themselves anyway.
    """
    T = keys.shape[-1]
    return (keys & _band(T, radius, keys.device)) | torch.eye(T, dtype=torch.bool, device=keys.device)


def sliding_attention(attn: base.Attention, radius: int) -> AttentionCall:
    """The batch's attention restricted to a symmetric window of `radius` tokens each side.

    Padded rows: the same padding mask ANDed with the band, built once per forward. Packed rows: the
    rows are padded, attended with that mask and unpadded (the same stand-in PackedAttention runs on
    the CPU); the varlen kernel's window is not used, so sliding layers never take the flash path.
    """
    if isinstance(attn, PaddedAttention):
        windowed = PaddedAttention(attn.attention_mask)
        windowed.mask = _windowed(attn.mask, radius)
        return windowed
    packed: PackedAttention = attn
    T, device = packed.max_length, packed.cu_seqlens.device
    rows = PaddedAttention(torch.arange(T, device=device)[None, :] < packed.lengths[:, None])  # [B, T]
    rows.mask = _windowed(rows.mask, radius)

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return packed.unpad(rows(packed.pad(q), packed.pad(k), packed.pad(v)))

    return call


class Attention(nn.Module):
    def __init__(self, config: Gemma3Config) -> None:
        super().__init__()
        H, d, bias = config.hidden_size, config.head_dim, config.attention_bias
        self.n_head, self.n_kv_head, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        self.q_proj = nn.Linear(H, self.n_head * d, bias=bias)
        self.k_proj = nn.Linear(H, self.n_kv_head * d, bias=bias)
        self.v_proj = nn.Linear(H, self.n_kv_head * d, bias=bias)
        self.o_proj = nn.Linear(self.n_head * d, H, bias=bias)
        self.q_norm = GemmaRMSNorm(d, config.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(d, config.rms_norm_eps)
        # SDPA divides by sqrt(head_dim); Gemma scales by query_pre_attn_scalar ** -0.5 instead
        self.q_scale = math.sqrt(d) / math.sqrt(config.query_pre_attn_scalar)

    def forward(self, x: torch.Tensor, attn: AttentionCall, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q = self.q_norm(self.q_proj(x).unflatten(-1, (self.n_head, self.head_dim)))  # [..., nh, d]
        k = self.k_norm(self.k_proj(x).unflatten(-1, (self.n_kv_head, self.head_dim)))  # [..., kv, d]
        v = self.v_proj(x).unflatten(-1, (self.n_kv_head, self.head_dim))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # after the q/k norms
        if self.q_scale != 1.0:
            q = q * self.q_scale
        return self.o_proj(attn(q, k, v).flatten(-2))


class MLP(nn.Module):
    def __init__(self, config: Gemma3Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = activation(config.hidden_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, config: Gemma3Config) -> None:
        super().__init__()
        eps, H = config.rms_norm_eps, config.hidden_size
        self.input_layernorm = GemmaRMSNorm(H, eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = GemmaRMSNorm(H, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(H, eps)
        self.mlp = MLP(config)
        self.post_feedforward_layernorm = GemmaRMSNorm(H, eps)

    def forward(self, x: torch.Tensor, attn: AttentionCall, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), attn, cos, sin))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3(base.EncoderModel):
    learned_positions = False  # RoPE: any position can be computed

    def __init__(self, config: Gemma3Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ropes = {
            FULL: Rope(config.head_dim, config.rope_theta, "linear", config.rope_linear_factor),
            SLIDING: Rope(config.head_dim, config.rope_local_base_freq),
        }
        self.radius = sliding_radius(config.sliding_window)
        self.embed_scale = math.sqrt(config.hidden_size)

    def encode(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn: base.Attention, adapters: torch.Tensor | None
    ) -> torch.Tensor:
        """input_ids, position_ids [B, T] or [N] -> token states [B, T, H] or [N, H]."""
        x = self.embed_tokens(input_ids)
        # the factor is rounded to the table's dtype first, as transformers does (27.75 in bf16)
        x = x * torch.tensor(self.embed_scale, dtype=torch.float32, device=x.device).to(x.dtype)
        kinds = set(self.config.layer_types)
        angles = {kind: self.ropes[kind](position_ids, x.dtype) for kind in kinds}  # once per kind
        calls: dict[str, AttentionCall] = {FULL: attn}
        if SLIDING in kinds:
            calls[SLIDING] = sliding_attention(attn, self.radius)
        for layer, kind in zip(self.layers, self.config.layer_types, strict=True):
            x = layer(x, calls[kind], *angles[kind])
        return self.norm(x)


def _rope_settings(config: dict[str, Any], source: str) -> dict[str, float]:
    """rope_theta / rope_local_base_freq / the linear factor from either config.json form.

    Published configs say `rope_theta`, `rope_local_base_freq` and `rope_scaling` (applied to the
    global layers only); transformers 5 saves `rope_parameters` per layer type. Scalings other than
    linear are refused rather than ignored.
    """
    parameters = config.get("rope_parameters") or {}
    full = dict(parameters.get(FULL) or {})
    local = dict(parameters.get(SLIDING) or {})
    if "rope_theta" in parameters and not full:  # a flat rope_parameters
        full = dict(parameters)
    full.update(config.get("rope_scaling") or {})
    settings: dict[str, float] = {}
    for kind, values in ((FULL, full), (SLIDING, local)):
        rope_type = values.get("rope_type", values.get("type", "default"))
        if rope_type not in ("default", "linear") or (kind == SLIDING and rope_type != "default"):
            raise ModelLoadError(
                f"{source}/config.json: RoPE type {rope_type!r} for {kind} is not supported for Gemma3"
            )
        if rope_type == "linear":
            settings["rope_linear_factor"] = float(values["factor"])
    theta = config.get("rope_theta", full.get("rope_theta"))
    local_theta = config.get("rope_local_base_freq", local.get("rope_theta"))
    if theta is not None:
        settings["rope_theta"] = float(theta)
    if local_theta is not None:
        settings["rope_local_base_freq"] = float(local_theta)
    return settings


def layer_types(config: dict[str, Any], source: str) -> tuple[str, ...]:
    """config.json's layer_types, else every `sliding_window_pattern`-th layer global (Gemma3TextConfig)."""
    given = config.get("layer_types")
    if given is not None:
        return tuple(str(kind) for kind in given)
    pattern = config.get("sliding_window_pattern", config.get("_sliding_window_pattern", DEFAULT_PATTERN))
    count = config.get("num_hidden_layers")
    if not isinstance(pattern, int) or pattern < 1 or not isinstance(count, int):
        raise ModelLoadError(f"{source}/config.json: no layer_types and no usable sliding_window_pattern")
    return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(count))


def build(config: dict, tensor_names: set[str], source: str) -> tuple[Gemma3, TensorLayout]:
    """The model (on whatever device is current) and tensor layout for a bidirectional gemma3_text checkpoint.

    ModelLoadError for another model_type, a causal Gemma3 (use_bidirectional_attention not true),
    attention soft-capping, or an unsupported RoPE scaling.
    """
    if config.get("model_type") != "gemma3_text":
        raise ModelLoadError(f"{source}/config.json: model_type {config.get('model_type')!r} is not 'gemma3_text'")
    if config.get("use_bidirectional_attention") is not True:
        raise ModelLoadError(
            f"{source}/config.json: use_bidirectional_attention is not true: a causal Gemma3 is a language "
            "model, which embedkit does not run as an embedder (EmbeddingGemma sets it true)"
        )
    if config.get("attn_logit_softcapping") is not None:
        raise ModelLoadError(f"{source}/config.json: attn_logit_softcapping is not supported for Gemma3")
    settings = dict(config)
    settings["num_key_value_heads"] = config.get("num_key_value_heads") or config.get("num_attention_heads")
    settings["layer_types"] = layer_types(config, source)
    settings.update(_rope_settings(config, source))
    settings["attention_bias"] = bool(config.get("attention_bias", False))
    if settings.get("sliding_window") is None:
        settings["sliding_window"] = 4096  # Gemma3TextConfig's default
    return Gemma3(config_from_dict(Gemma3Config, settings, f"{source}/config.json")), LAYOUT


def _special(tokenizer: Tokenizer, name: str, config_id: object) -> tuple[str, int] | None:
    token_id = tokenizer.token_to_id(name)
    if token_id is not None:
        return name, token_id
    if isinstance(config_id, list) and config_id:
        config_id = config_id[0]
    if isinstance(config_id, int) and (token := tokenizer.id_to_token(config_id)) is not None:
        return token, config_id
    return None


def prepare_tokenizer(tokenizer: Tokenizer, config: dict) -> Tokenizer:
    """Make every encoding `<bos> text <eos>`, as EmbeddingGemma was trained and sentence-transformers feeds it.

    Its tokenizer_config.json sets add_bos_token and add_eos_token, which transformers' GemmaTokenizer turns
    into the post-processor at load time; a tokenizer.json whose own template lacks either (Gemma's default
    adds <bos> only) gets a TemplateProcessing that adds both. Decided by encoding a sample, not by the
    model's name; a tokenizer that already does it is returned unchanged.
    """
    bos = _special(tokenizer, "<bos>", config.get("bos_token_id"))
    eos = _special(tokenizer, "<eos>", config.get("eos_token_id"))
    if bos is None or eos is None:
        log.warning("tokenizer has no <bos>/<eos> and config.json no usable ids; left unchanged")
        return tokenizer
    sample = tokenizer.encode("a").ids
    if sample and sample[0] == bos[1] and sample[-1] == eos[1] and len(sample) > 2:
        return tokenizer
    (b, b_id), (e, e_id) = bos, eos
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{b} $A {e}", pair=f"{b} $A {e} $B:1 {e}:1", special_tokens=[(b, b_id), (e, e_id)]
    )
    log.info("tokenizer does not add %s ... %s; adding both, as EmbeddingGemma's tokenizer_config.json asks", b, e)
    return tokenizer
