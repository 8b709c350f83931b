"""Qwen2 and Qwen3 decoders used as embedders (gte-Qwen2-instruct, Qwen3-Embedding) in plain PyTorch.

A pre-norm decoder: RMSNorm (in fp32) before attention and before the MLP, residuals around both, a
final RMSNorm. Attention is grouped-query (`num_key_value_heads` k/v heads, each shared by
`num_attention_heads / num_key_value_heads` query heads) with rotary embeddings (GPT-NeoX
`rotate_half` style, `rope_theta`); the MLP is SwiGLU, `down(silu(gate(x)) * up(x))`. The two
generations differ in three places:

* qwen2 (gte-Qwen2-1.5B/7B-instruct): q/k/v projections have a bias, o_proj has none; head_dim is
  hidden_size / num_attention_heads unless config.json says otherwise.
* qwen3 (Qwen3-Embedding-0.6B/4B/8B): no projection bias (`attention_bias` false); head_dim is
  explicit in config.json (128, not H / nh); q and k pass through a per-head RMSNorm (`q_norm`,
  `k_norm`) BEFORE RoPE.
* Attention direction: gte-Qwen2 was trained and is evaluated bidirectionally (padding mask only),
  although its config.json may lack `is_causal: false`; Qwen3-Embedding is causal (its authors found
  causal better, QwenLM/Qwen3-Embedding#9). See `is_causal`.

Tensor names are the published ones (`embed_tokens`, `layers.N.self_attn.q_proj`, `mlp.gate_proj`,
`norm`, ...), unprefixed (Qwen3-Embedding) or under `model.` (ForCausalLM saves, gte-Qwen2); an
`lm_head` is ignored. Pooling (last token) is the runtime's, not the model's.

`causal_lm` builds the same decoder with its language-model head (`QwenForCausalLM`, the layout
transformers' Qwen3ForCausalLM saves: `model.*` plus `lm_head.weight`, or no `lm_head` when
`tie_word_embeddings` is true and the head is the embedding table). Qwen3-Reranker reads it
(embedkit/rerank/qwen3.py), and only a few rows of the head: `head_rows`.

Tokenization: gte-Qwen2's original tokenizer appended `<|endoftext|>` to every text while its
tokenizer.json has no post-processor doing so (TEI installs `TemplateProcessing("$A <|endoftext|>")`
for it); Qwen3-Embedding's tokenizer.json appends it already. `prepare_tokenizer` checks which by
encoding a sample, not by the model's name.

Sources: transformers `models/qwen2/modeling_qwen2.py`, `models/qwen3/modeling_qwen3.py` (5.23);
TEI `backends/candle/src/models/{qwen2,flash_qwen2,qwen3}.rs`, `router/src/lib.rs`, PRs #762 and #808;
QwenLM/Qwen3-Embedding README and issues #9, #54; gte-Qwen2-1.5B-instruct config_sentence_transformers.json;
checked against golden vectors from sentence-transformers (tests/models/test_qwen.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer, processors
from torch import nn

from embedkit.errors import ModelLoadError
from embedkit.models import base
from embedkit.models.layers import RMSNorm, Rope, activation, apply_rope
from embedkit.models.loading import TensorLayout, check_heads, config_from_dict

__all__ = [
    "LAYOUT",
    "Qwen",
    "QwenConfig",
    "QwenForCausalLM",
    "build",
    "causal_lm",
    "default_prompts",
    "prepare_tokenizer",
]

log = logging.getLogger(__name__)

END_OF_TEXT = "<|endoftext|>"
WEB_SEARCH_INSTRUCTION = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
QWEN3_DEFAULT_HEAD_DIM = 128  # transformers' Qwen3Config default when config.json has no head_dim


@dataclass(frozen=True)
class QwenConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int  # build() fills it in (num_attention_heads when absent, as transformers)
    intermediate_size: int
    head_dim: int  # build() fills it in
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0  # transformers' Qwen2Config / Qwen3Config default
    max_position_embeddings: int = 32768
    qkv_bias: bool = True  # decided by build() from model_type (and attention_bias for qwen3)
    o_bias: bool = False
    qk_norm: bool = False
    causal: bool = False  # decided by build(), see `is_causal`

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelLoadError(
                f"config.json: num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_key_value_heads {self.num_key_value_heads}"
            )


# Module attributes carry the published names, so there is nothing to rename.
LAYOUT = TensorLayout(
    anchor="embed_tokens.weight",
    prefixes=("model.", ""),  # `model.` first, as TEI probes it
    ignore=(r"lm_head\..*", r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),
)


def rope_theta(config: dict[str, Any], source: str) -> float | None:
    """`rope_theta` (published configs) or `rope_parameters.rope_theta` (transformers 5); None when absent.

    Only plain RoPE is implemented: a scaled variant (YaRN, dynamic NTK, ...) is refused rather than ignored.
    """
    parameters = config.get("rope_parameters") or {}
    for scaling in (config.get("rope_scaling") or {}, parameters):
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind != "default":
            raise ModelLoadError(f"{source}/config.json: RoPE scaling type {kind!r} is not supported for Qwen")
    theta = config.get("rope_theta", parameters.get("rope_theta"))
    return None if theta is None else float(theta)


def is_causal(config: dict[str, Any], source: str) -> bool:
    """Whether attention gets the causal triangle on top of the padding mask.

    Explicit config.json keys win: `use_bidirectional_attention: true` (TEI's qwen3 flag, PR #808)
    or a boolean `is_causal` (transformers' flag). Without them qwen3 is causal (Qwen3-Embedding)
    and qwen2 bidirectional: gte-Qwen2 was trained non-causal, and only some copies of its
    config.json say `is_causal: false`. TEI since PR #762 defaults qwen2 to causal when the key is
    absent, which embeds gte-Qwen2 wrongly; we keep the model's own training setup.
    """
    if config.get("use_bidirectional_attention") is True:
        return False
    if isinstance(config.get("is_causal"), bool):
        return config["is_causal"]
    if config.get("model_type") == "qwen2":
        log.info("%s/config.json: no is_causal key; running qwen2 bidirectionally, as gte-Qwen2 was trained", source)
        return False
    return True


class Attention(nn.Module):
    def __init__(self, config: QwenConfig) -> None:
        super().__init__()
        H, d = config.hidden_size, config.head_dim
        self.n_head, self.n_kv_head, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        self.q_proj = nn.Linear(H, self.n_head * d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(H, self.n_kv_head * d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(H, self.n_kv_head * d, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.n_head * d, H, bias=config.o_bias)
        if config.qk_norm:  # per head, over head_dim only
            self.q_norm: nn.Module = RMSNorm(d, config.rms_norm_eps)
            self.k_norm: nn.Module = RMSNorm(d, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def forward(self, x: torch.Tensor, attn: base.Attention, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q = self.q_norm(self.q_proj(x).unflatten(-1, (self.n_head, self.head_dim)))  # [..., nh, d]
        k = self.k_norm(self.k_proj(x).unflatten(-1, (self.n_kv_head, self.head_dim)))  # [..., kv, d]
        v = self.v_proj(x).unflatten(-1, (self.n_kv_head, self.head_dim))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # after q_norm (qwen3)
        return self.o_proj(attn(q, k, v).flatten(-2))  # grouped-query: kv head h // group serves query head h


class MLP(nn.Module):
    def __init__(self, config: QwenConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, config: QwenConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, attn: base.Attention, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), attn, cos, sin)  # pre-norm
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen(base.EncoderModel):
    learned_positions = False  # RoPE: any position can be computed

    def __init__(self, config: QwenConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rope = Rope(config.head_dim, config.rope_theta)
        self.causal = config.causal  # the shared attention adds the causal triangle to the padding mask

    def encode(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn: base.Attention, adapters: torch.Tensor | None
    ) -> torch.Tensor:
        """input_ids, position_ids [B, T] or [N] -> token states [B, T, H] or [N, H]."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rope(position_ids, x.dtype)  # once, shared by every layer
        for layer in self.layers:
            x = layer(x, attn, cos, sin)
        return self.norm(x)


def build(config: dict, tensor_names: set[str], source: str) -> tuple[Qwen, TensorLayout]:
    """The model (on whatever device is current) and tensor layout for a qwen2 / qwen3 checkpoint."""
    model_type = config.get("model_type")
    if model_type not in ("qwen2", "qwen3"):
        raise ModelLoadError(f"{source}/config.json: model_type {model_type!r} is neither 'qwen2' nor 'qwen3'")
    if config.get("use_sliding_window") or "sliding_attention" in (config.get("layer_types") or ()):
        raise ModelLoadError(f"{source}/config.json: sliding-window attention is not supported for Qwen")
    qwen3 = model_type == "qwen3"
    settings = dict(config)
    if config.get("head_dim") is None:
        if qwen3:
            log.warning("%s/config.json: no head_dim; using Qwen3's default %d", source, QWEN3_DEFAULT_HEAD_DIM)
            settings["head_dim"] = QWEN3_DEFAULT_HEAD_DIM
        elif config.get("hidden_size") and config.get("num_attention_heads"):
            check_heads(config["hidden_size"], config["num_attention_heads"])
            settings["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    settings["num_key_value_heads"] = config.get("num_key_value_heads") or config.get("num_attention_heads")
    theta = rope_theta(config, source)
    if theta is None:
        log.warning("%s/config.json: no rope_theta; using transformers' default %g", source, QwenConfig.rope_theta)
    settings["rope_theta"] = theta
    # qwen2 always has q/k/v biases and none on o_proj; qwen3's `attention_bias` covers all four
    settings["qkv_bias"] = bool(config.get("attention_bias", False)) if qwen3 else True
    settings["o_bias"] = qwen3 and bool(config.get("attention_bias", False))
    settings["qk_norm"] = qwen3
    settings["causal"] = is_causal(config, source)
    return Qwen(config_from_dict(QwenConfig, settings, f"{source}/config.json")), LAYOUT


class QwenForCausalLM(nn.Module):
    """The decoder (`model`) and its language-model head, named as transformers' Qwen*ForCausalLM saves them.

    The head is `lm_head` [V, H] (no bias), or the embedding table itself when tied. Nothing here runs the
    head over the vocabulary: callers that score a few tokens take `head_rows` and multiply by those alone.
    """

    def __init__(self, model: Qwen, *, tied: bool) -> None:
        super().__init__()
        self.model = model
        self.tied = tied
        if not tied:
            self.lm_head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)

    def head_rows(self, token_ids: list[int]) -> torch.Tensor:
        """The head's rows for `token_ids`, [len(token_ids), H], a copy (the full head can then be dropped)."""
        weight = self.model.embed_tokens.weight if self.tied else self.lm_head.weight
        vocab = int(weight.shape[0])
        bad = [token for token in token_ids if not 0 <= token < vocab]
        if bad:
            raise ModelLoadError(f"token ids {bad} are outside the language-model head's {vocab} rows")
        return weight[token_ids].detach().clone()


def causal_lm(config: dict, tensor_names: set[str], source: str) -> tuple[QwenForCausalLM, TensorLayout]:
    """The decoder with its LM head (on whatever device is current) and the ForCausalLM checkpoint's layout.

    Tied only when config.json's `tie_word_embeddings` is true (absent means untied, as transformers'
    Qwen3Config defaults it to false); a tied checkpoint may still hold an `lm_head.weight` copy, which is
    ignored. ModelLoadError when the tensors are not under `model.` (a bare
    decoder such as Qwen3-Embedding's) or an untied checkpoint has no `lm_head.weight`.
    """
    model, _ = build(config, tensor_names, source)
    if tensor_names and "model.embed_tokens.weight" not in tensor_names:
        raise ModelLoadError(
            f"{source}: no model.embed_tokens.weight; a causal-LM checkpoint (Qwen*ForCausalLM) keeps the decoder "
            "under `model.` beside its lm_head (unprefixed tensors are a bare decoder, e.g. an embedding model)"
        )
    tied = config.get("tie_word_embeddings") is True
    if not tied and tensor_names and "lm_head.weight" not in tensor_names:
        raise ModelLoadError(
            f"{source}: no lm_head.weight and config.json's tie_word_embeddings is not true; "
            "the checkpoint has no language-model head"
        )
    ignore = [r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"]
    if tied:
        ignore.append(r"lm_head\.weight")
    layout = TensorLayout(anchor="model.embed_tokens.weight", prefixes=("",), ignore=tuple(ignore))
    return QwenForCausalLM(model, tied=tied), layout


def prepare_tokenizer(tokenizer: Tokenizer, config: dict) -> Tokenizer:
    """Make every encoding end with `<|endoftext|>`, whose state last-token pooling reads.

    Decided by what the tokenizer does, not by the model's name: when a sample's last real token is
    not already end-of-text (gte-Qwen2's tokenizer.json), a TemplateProcessing appending it (as TEI
    installs for gte-Qwen2) is chained after the existing post-processor; a tokenizer that appends
    it already (Qwen3-Embedding's) is returned unchanged.
    """
    token, token_id = END_OF_TEXT, tokenizer.token_to_id(END_OF_TEXT)
    if token_id is None:  # a renamed vocabulary: fall back to the config's eos id
        eos = config.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) and eos else eos
        if not isinstance(eos, int) or (name := tokenizer.id_to_token(eos)) is None:
            log.warning("tokenizer has no %s and config.json no usable eos_token_id; left unchanged", END_OF_TEXT)
            return tokenizer
        token, token_id = name, eos
    sample = tokenizer.encode("a")
    real = [i for i, attend in zip(sample.ids, sample.attention_mask, strict=True) if attend]
    if real and real[-1] == token_id:
        return tokenizer
    template = processors.TemplateProcessing(
        single=f"$A {token}", pair=f"$A {token} $B:1 {token}:1", special_tokens=[(token, token_id)]
    )
    existing = tokenizer.post_processor  # e.g. ByteLevel offset trimming: keep it, then append
    tokenizer.post_processor = template if existing is None else processors.Sequence([existing, template])
    log.info("tokenizer does not append %s; appending it to every text, as the model was trained", token)
    return tokenizer


def default_prompts(config: dict) -> dict[str, str]:
    """The instruction prompts of the published model cards, for checkpoints without ST prompts.

    Documents get none. gte-Qwen2 puts a space after "Query:" (its config_sentence_transformers.json),
    Qwen3-Embedding none (its README and evaluation code).
    """
    if config.get("model_type") == "qwen2":
        return {"query": WEB_SEARCH_INSTRUCTION + " "}
    if config.get("model_type") == "qwen3":
        return {"query": WEB_SEARCH_INSTRUCTION}
    return {}
