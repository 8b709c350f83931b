"""jina-embeddings-v3 (remote code `jinaai/xlm-roberta-flash-implementation`) in plain PyTorch.

An XLM-RoBERTa body (Sturua et al. 2024, "jina-embeddings-v3") with three changes:

* no absolute positions: rotary embeddings on q and k (GPT-NeoX `rotate_half`, full head dim,
  base `rotary_emb_base`, positions 0..T-1 without XLM-R's padding offset);
* a fused `mixer.Wqkv` ([q | k | v], heads contiguous in each part) and flash-attn's post-norm
  `Block`: x = norm1(x + out_proj(attn)); x = norm2(x + fc2(gelu(fc1(x)))), the embeddings
  (word + token type 0) normalised by `emb_ln` first;
* five task LoRA adapters (`lora_adaptations`, index = task id) on every Linear and Embedding,
  stored through `torch.nn.utils.parametrize`: `<module>.parametrizations.weight.original` is the base
  weight, `.parametrizations.weight.0.lora_A` / `.lora_B` the adapters stacked on dim 0. With
  scale = lora_alpha / lora_rank, adapter t gives
      Linear    [out, in]:  W_t = W + scale * B[t] @ A[t],  A [n, r, in],    B [n, out, r]
      Embedding [vocab, H]: E_t = E + scale * A[t] @ B[t],  A [n, vocab, r], B [n, r, H]
  and no task means the base weights. Here the adapters run unmerged and per row, as low-rank
  products (x A^T) B^T, so one batch can mix tasks; `merge_adapter` folds one into the weights.

Two on-disk layouts, told apart by their tensor names (under `roberta.` or no prefix):

* original (remote code `XLMRobertaLoRA`, the published checkpoint): the parametrization names above;
* transformers' native `jina_embeddings_v3` as `save_pretrained` writes it: the same module names
  with plain `.weight` (transformers renames them to `layers.N.self_attn.q_proj` etc. only in memory)
  and no adapters, config `model_type` "jina_embeddings_v3" with `rope_parameters`.

The pooler (and its LoRA) and any `lm_head` are not part of the embedding and are ignored; pooling
(mean) is done by the runtime.

Sources: upstream `modeling_lora.py` (LoRAParametrization, XLMRobertaLoRA), `modeling_xlm_roberta.py`,
`mha.py`, `rotary.py`, `configuration_xlm_roberta.py` (as vendored in GitHub `aoncevay/jina-wrapper`);
transformers' `jina_embeddings_v3` port and its `conversion_mapping.py`; checked against golden
vectors the original code computed (tests/models/test_jina_v3.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.errors import ModelLoadError
from embedkit.models.base import Attention, EncoderModel
from embedkit.models.layers import Rope, activation, apply_rope
from embedkit.models.loading import TensorLayout, check_heads, config_from_dict

__all__ = ["LORA_LAYOUT", "PLAIN_LAYOUT", "JinaV3", "JinaV3Config", "build", "default_prompts", "task_instructions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JinaV3Config:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 8194  # no position table: a soft limit only
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    position_embedding_type: str = "rotary"
    rotary_emb_base: float = 10000.0  # set by `rotary_base` from whichever key the config uses
    rotary_emb_dim: float | None = None  # upstream: the head dim unless set
    rotary_emb_interleaved: bool = False
    rotary_emb_scale_base: float | None = None  # xPos
    # the adapters the weights carry (from lora_adaptations; empty without LoRA tensors)
    adapters: tuple[str, ...] = ()
    lora_rank: int = 4
    lora_alpha: float = 1.0

    def __post_init__(self) -> None:
        check_heads(self.hidden_size, self.num_attention_heads)
        if self.position_embedding_type != "rotary":
            raise ModelLoadError(
                f"config.json: position_embedding_type={self.position_embedding_type!r} is not supported for "
                "jina-embeddings-v3 (only 'rotary', as published)"
            )
        if self.rotary_emb_interleaved:
            raise ModelLoadError("config.json: rotary_emb_interleaved=true (GPT-J style RoPE) is not supported")
        if self.rotary_emb_scale_base is not None:
            raise ModelLoadError("config.json: rotary_emb_scale_base is set (xPos), which is not supported")
        if self.rotary_emb_dim is not None and self.rotary_emb_dim != self.head_dim:
            raise ModelLoadError(
                f"config.json: rotary_emb_dim={self.rotary_emb_dim} (partial rotary) is not supported; "
                f"only the full head dim {self.head_dim}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank


def rotary_base(config: dict[str, Any], source: str) -> float:
    """RoPE base from `rotary_emb_base` (remote code), `rope_theta` or `rope_parameters` (transformers 5)."""
    parameters = config.get("rope_parameters") or {}
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    if rope_type != "default":
        raise ModelLoadError(f"{source}: rope_parameters rope_type={rope_type!r} is not supported (only 'default')")
    for value in (config.get("rotary_emb_base"), config.get("rope_theta"), parameters.get("rope_theta")):
        if value is not None:
            return float(value)
    # the class defaults when a config leaves the base out: XLMRobertaFlashConfig 10000,
    # transformers' JinaEmbeddingsV3Config 20000 (the published file sets 20000)
    base = 20000.0 if config.get("model_type") == "jina_embeddings_v3" else 10000.0
    log.warning("%s: no rotary_emb_base / rope_theta; using the config class default %g", source, base)
    return base


def task_instructions(config: dict[str, Any]) -> dict[str, str]:
    """config.json's `task_instructions` (task -> prefix), for when there is no sentence-transformers prompt file."""
    value = config.get("task_instructions") or {}
    if not isinstance(value, dict):
        raise ModelLoadError(f"config.json: task_instructions must be an object, got {type(value).__name__}")
    return {str(task): str(prefix) for task, prefix in value.items()}


# the runtime's hook for prompts when config_sentence_transformers.json has none
default_prompts = task_instructions


# -- tensor layouts ---------------------------------------------------------------------------------

# LoRA-carrying modules: published name -> attribute path in `JinaV3`
_ADAPTED = (
    ("embeddings.word_embeddings", "embeddings.word_embeddings"),
    ("embeddings.token_type_embeddings", "embeddings.token_type_embeddings"),
    ("encoder.layers.{n}.mixer.Wqkv", "layers.{n}.attn.qkv"),
    ("encoder.layers.{n}.mixer.out_proj", "layers.{n}.attn.out"),
    ("encoder.layers.{n}.mlp.fc1", "layers.{n}.mlp.up"),
    ("encoder.layers.{n}.mlp.fc2", "layers.{n}.mlp.down"),
)
_NORMS = (
    ("emb_ln.", "embeddings.norm."),
    ("encoder.layers.{n}.norm1.", "layers.{n}.attn_norm."),
    ("encoder.layers.{n}.norm2.", "layers.{n}.mlp_norm."),
)
# the pooler (with its own LoRA) and an MLM head are not part of the embedding
_IGNORE = (r"pooler\..*", r"lm_head\..*")

# transformers' native layout (and the remote code's XLMRobertaModel without LoRA): plain `.weight`
PLAIN_LAYOUT = TensorLayout(
    anchor="embeddings.word_embeddings.weight",
    prefixes=("roberta.", ""),
    ignore=_IGNORE,
    renames={"norms": _NORMS, "adapted": tuple((f"{published}.", f"{ours}.") for published, ours in _ADAPTED)},
)

# the remote code's XLMRobertaLoRA: torch parametrizations; the full names come first so that
# errors name a missing base weight or adapter as the checkpoint spells it
LORA_LAYOUT = TensorLayout(
    anchor="embeddings.word_embeddings.parametrizations.weight.original",
    prefixes=("roberta.", ""),
    ignore=_IGNORE,
    renames={
        "norms": _NORMS,
        "adapted": tuple(
            rename
            for published, ours in _ADAPTED
            for rename in (
                (f"{published}.parametrizations.weight.original", f"{ours}.weight"),
                (f"{published}.parametrizations.weight.0.lora_A", f"{ours}.lora_A"),
                (f"{published}.parametrizations.weight.0.lora_B", f"{ours}.lora_B"),
                (f"{published}.", f"{ours}."),  # the bias
            )
        ),
    },
)

_LORA_SIGN = ".parametrizations.weight.original"


# -- modules ----------------------------------------------------------------------------------------

NO_ADAPTERS = "this layer holds no LoRA adapters (the config has none, or one was merged)"


class LoRALinear(nn.Linear):
    """nn.Linear plus optional stacked adapters: lora_A [n, r, in], lora_B [n, out, r]."""

    def __init__(self, in_features: int, out_features: int, config: JinaV3Config) -> None:
        super().__init__(in_features, out_features)
        n, r = len(config.adapters), config.lora_rank
        self.lora_A = nn.Parameter(torch.empty(n, r, in_features)) if n else None
        self.lora_B = nn.Parameter(torch.empty(n, out_features, r)) if n else None
        self.scaling = config.lora_scale

    def forward(self, x: torch.Tensor, adapters: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in], adapters [..., n] (each token's scale on its own adapter, 0 elsewhere) -> [..., out].

        Without `adapters` it is the plain nn.Linear it extends (the base weights).
        """
        y = super().forward(x)
        if adapters is None or self.lora_A is None or self.lora_B is None:
            return y
        n, r, _ = self.lora_A.shape
        # every adapter's rank-r product at once (n * r is 20 for jina-v3), then each token keeps its own:
        # no per-row weight gather, so the same maths serves [B, T] and packed [N] tokens
        xa = F.linear(x, self.lora_A.flatten(0, 1)).unflatten(-1, (n, r)) * adapters[..., None]  # [..., n, r]
        return y + F.linear(xa.flatten(-2), self.lora_B.permute(1, 0, 2).flatten(1))  # y + (x A_t^T) B_t^T

    def delta(self, index: int) -> torch.Tensor:
        """[out, in] fp32: what adapter `index` adds to the weight; ValueError when the layer holds none."""
        if self.lora_A is None or self.lora_B is None:
            raise ValueError(NO_ADAPTERS)
        return self.lora_B[index].float() @ self.lora_A[index].float() * self.scaling


class LoRAEmbedding(nn.Embedding):
    """nn.Embedding plus optional stacked adapters: lora_A [n, vocab, r], lora_B [n, r, H] (the roles swap)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, config: JinaV3Config) -> None:
        super().__init__(num_embeddings, embedding_dim)
        n, r = len(config.adapters), config.lora_rank
        self.lora_A = nn.Parameter(torch.empty(n, num_embeddings, r)) if n else None
        self.lora_B = nn.Parameter(torch.empty(n, r, embedding_dim)) if n else None
        self.scaling = config.lora_scale

    def forward(self, ids: torch.Tensor, adapters: torch.Tensor | None = None) -> torch.Tensor:
        """ids [...], adapters [..., n] -> [..., H]; without `adapters`, the plain nn.Embedding (base table)."""
        x = F.embedding(ids, self.weight)
        if adapters is None or self.lora_A is None or self.lora_B is None:
            return x
        a = self.lora_A[:, ids].movedim(0, -2) * adapters[..., None]  # each adapter's row for these ids: [..., n, r]
        return x + a.flatten(-2) @ self.lora_B.flatten(0, 1)  # x + A_t[id] B_t

    def delta(self, index: int) -> torch.Tensor:
        """[vocab, H] fp32: what adapter `index` adds to the table; ValueError when the layer holds none."""
        if self.lora_A is None or self.lora_B is None:
            raise ValueError(NO_ADAPTERS)
        return self.lora_A[index].float() @ self.lora_B[index].float() * self.scaling


class Embeddings(nn.Module):
    def __init__(self, config: JinaV3Config) -> None:
        super().__init__()
        H = config.hidden_size
        self.word_embeddings = LoRAEmbedding(config.vocab_size, H, config)
        types = config.type_vocab_size
        self.token_type_embeddings = LoRAEmbedding(types, H, config) if types else None  # none when 0
        self.norm = nn.LayerNorm(H, eps=config.layer_norm_eps)  # emb_ln

    def forward(self, input_ids: torch.Tensor, adapters: torch.Tensor | None) -> torch.Tensor:
        x = self.word_embeddings(input_ids, adapters)  # [..., H]; no absolute positions
        if self.token_type_embeddings is not None:
            # single segment: token type 0 everywhere, adapted as the token's row
            x = x + self.token_type_embeddings(torch.zeros_like(input_ids), adapters)
        return self.norm(x)


class SelfAttention(nn.Module):
    def __init__(self, config: JinaV3Config) -> None:
        super().__init__()
        H = config.hidden_size
        self.n_head = config.num_attention_heads
        self.qkv = LoRALinear(H, 3 * H, config)  # mixer.Wqkv
        self.out = LoRALinear(H, H, config)  # mixer.out_proj

    def forward(
        self, x: torch.Tensor, attn: Attention, cos: torch.Tensor, sin: torch.Tensor, adapters: torch.Tensor | None
    ) -> torch.Tensor:
        H = x.shape[-1]
        q, k, v = (t.unflatten(-1, (self.n_head, -1)) for t in self.qkv(x, adapters).split(H, dim=-1))  # [..., nh, d]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.out(attn(q, k, v).flatten(-2), adapters)


class FeedForward(nn.Module):
    def __init__(self, config: JinaV3Config) -> None:
        super().__init__()
        self.up = LoRALinear(config.hidden_size, config.intermediate_size, config)  # mlp.fc1
        self.down = LoRALinear(config.intermediate_size, config.hidden_size, config)  # mlp.fc2
        self.act = activation(config.hidden_act)  # "gelu" is the exact erf form, as upstream's F.gelu

    def forward(self, x: torch.Tensor, adapters: torch.Tensor | None) -> torch.Tensor:
        return self.down(self.act(self.up(x, adapters)), adapters)


class Layer(nn.Module):
    def __init__(self, config: JinaV3Config) -> None:
        super().__init__()
        self.attn = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # norm1
        self.mlp = FeedForward(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # norm2

    def forward(
        self, x: torch.Tensor, attn: Attention, cos: torch.Tensor, sin: torch.Tensor, adapters: torch.Tensor | None
    ) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, attn, cos, sin, adapters))  # post-norm (flash-attn Block, prenorm=False)
        return self.mlp_norm(x + self.mlp(x, adapters))


class JinaV3(EncoderModel):
    learned_positions = False  # RoPE: any position can be computed

    def __init__(self, config: JinaV3Config) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        # positions 0..T-1 without XLM-R's padding offset; fp32 angles, as upstream's RotaryEmbedding
        self.rope = Rope(config.head_dim, config.rotary_emb_base)
        self.merged_adapter: int | None = None  # set by merge_adapter

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return self.config.adapters

    def select(self, adapter_ids: torch.Tensor | None, rows: int) -> torch.Tensor | None:
        """Check adapter_ids [B] (-1 = base weights) -> [B, n] per-row adapter scales, or None when no
        row needs a LoRA product.

        Row b gets lora_alpha / lora_rank at its adapter's index and 0 elsewhere. Read on the host (a
        sync if the ids are on the device), moved to the weights' device without waiting.
        """
        if adapter_ids is None:
            return None
        if adapter_ids.shape != (rows,):
            raise ValueError(f"adapter_ids has shape {tuple(adapter_ids.shape)}, expected ({rows},)")
        ids = adapter_ids.cpu().long()
        low, high = int(ids.min()), int(ids.max())
        if self.merged_adapter is not None:
            if low != self.merged_adapter or high != self.merged_adapter:
                raise ValueError(
                    f"adapter {self.merged_adapter} ({self.adapter_names[self.merged_adapter]!r}) is merged into the "
                    f"weights; adapter_ids must all be {self.merged_adapter} (got {low}..{high})"
                )
            return None
        n = len(self.adapter_names)
        if low < -1 or high >= n:
            names = ", ".join(f"{i}={name!r}" for i, name in enumerate(self.adapter_names)) or "none"
            raise ValueError(f"adapter_ids must be -1 (base weights) or an adapter index ({names}); got {low}..{high}")
        if high == -1:
            return None
        scales = F.one_hot(ids.clamp(min=0), n) * (ids >= 0)[:, None] * self.config.lora_scale  # [B, n]
        weight = self.embeddings.word_embeddings.weight
        return scales.to(device=weight.device, dtype=weight.dtype, non_blocking=True)

    def encode(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn: Attention, adapters: torch.Tensor | None
    ) -> torch.Tensor:
        """input_ids, position_ids [B, T] or [N], adapters [B, n] from `select` -> [B, T, H] or [N, H]."""
        per_token = None if adapters is None else attn.per_token(adapters)  # [B, 1, n] or [N, n]
        x = self.embeddings(input_ids, per_token)
        cos, sin = self.rope(position_ids, x.dtype)  # once, shared by every layer
        for layer in self.layers:
            x = layer(x, attn, cos, sin, per_token)
        return x

    @torch.no_grad()
    def merge_adapter(self, index: int) -> None:
        """Fold adapter `index` into the weights (in fp32, cast back) and drop every LoRA tensor."""
        if self.merged_adapter is not None:
            raise ValueError(f"adapter {self.merged_adapter} is already merged into the weights")
        if not 0 <= index < len(self.adapter_names):
            raise ValueError(f"no adapter {index}: this model has {len(self.adapter_names)} ({self.adapter_names})")
        for module in self.modules():
            if isinstance(module, LoRALinear | LoRAEmbedding) and module.lora_A is not None:
                module.weight.copy_((module.weight.float() + module.delta(index)).to(module.weight.dtype))
                module.lora_A = module.lora_B = None
        self.merged_adapter = index


def build(config: dict, tensor_names: set[str], source: str) -> tuple[JinaV3, TensorLayout]:
    """The model (on whatever device is current) and tensor layout for a jina-embeddings-v3 checkpoint."""
    where = f"{source}/config.json"
    if tensor_names:
        lora = any(name.endswith(_LORA_SIGN) for name in tensor_names)
    else:  # pickled weights: no names before loading; a wrong guess still fails naming the tensors
        lora = bool(config.get("lora_adaptations"))
    adapters = config.get("lora_adaptations") or []
    if lora and not (isinstance(adapters, list) and all(isinstance(a, str) for a in adapters) and adapters):
        raise ModelLoadError(
            f"{where}: the weights carry LoRA adapters (*{_LORA_SIGN}) but lora_adaptations "
            f"is {config.get('lora_adaptations')!r}; it must list the adapters' task names in order"
        )
    if config.get("emb_pooler") not in (None, "mean"):
        # upstream encode() pools the CLS token then; the runtime pools as 1_Pooling/config.json says
        log.warning("%s: emb_pooler=%r is not applied; pooling follows 1_Pooling", where, config["emb_pooler"])
    if adapters and not lora:
        log.info("%s: lora_adaptations is set but the weights hold no adapters; tasks select prompts only", source)
    settings = {
        **config,
        "rotary_emb_base": rotary_base(config, where),
        "adapters": tuple(adapters) if lora else (),
    }
    return JinaV3(config_from_dict(JinaV3Config, settings, where)), LORA_LAYOUT if lora else PLAIN_LAYOUT
