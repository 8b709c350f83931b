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
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.errors import ModelLoadError
from embedkit.models.layers import activation, attention, rotate_half
from embedkit.models.loading import TensorLayout, check_heads, config_from_dict

__all__ = ["JinaV3Config", "JinaV3", "LORA_LAYOUT", "PLAIN_LAYOUT", "build", "task_instructions", "default_prompts"]

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
    renames=(*_NORMS, *((f"{published}.", f"{ours}.") for published, ours in _ADAPTED)),
)

# the remote code's XLMRobertaLoRA: torch parametrizations; the full names come first so that
# errors name a missing base weight or adapter as the checkpoint spells it
LORA_LAYOUT = TensorLayout(
    anchor="embeddings.word_embeddings.parametrizations.weight.original",
    prefixes=("roberta.", ""),
    ignore=_IGNORE,
    renames=(
        *_NORMS,
        *(
            rename
            for published, ours in _ADAPTED
            for rename in (
                (f"{published}.parametrizations.weight.original", f"{ours}.weight"),
                (f"{published}.parametrizations.weight.0.lora_A", f"{ours}.lora_A"),
                (f"{published}.parametrizations.weight.0.lora_B", f"{ours}.lora_B"),
                (f"{published}.", f"{ours}."),  # the bias
            )
        ),
    ),
)

_LORA_SIGN = ".parametrizations.weight.original"


# -- modules ----------------------------------------------------------------------------------------


class Selection(NamedTuple):
    """Which adapter each row of a batch uses, computed once per forward."""

    rows: torch.Tensor  # [B] long: the adapter index (0 for rows without one)
    scale: torch.Tensor  # [B, 1, 1]: lora_alpha / lora_rank, 0 for rows on the base weights


class LoRALinear(nn.Linear):
    """nn.Linear plus optional stacked adapters: lora_A [n, r, in], lora_B [n, out, r]."""

    def __init__(self, in_features: int, out_features: int, config: JinaV3Config) -> None:
        super().__init__(in_features, out_features)
        n, r = len(config.adapters), config.lora_rank
        self.lora_A = nn.Parameter(torch.empty(n, r, in_features)) if n else None
        self.lora_B = nn.Parameter(torch.empty(n, out_features, r)) if n else None
        self.scaling = config.lora_scale

    def forward(self, x: torch.Tensor, sel: Selection | None) -> torch.Tensor:
        y = super().forward(x)  # [B, T, out]
        if sel is None or self.lora_A is None:
            return y
        xa = torch.bmm(x, self.lora_A[sel.rows].transpose(1, 2)) * sel.scale  # [B, T, r]
        return torch.baddbmm(y, xa, self.lora_B[sel.rows].transpose(1, 2))  # y + (x A^T) B^T

    def delta(self, index: int) -> torch.Tensor:
        """[out, in] fp32: what adapter `index` adds to the weight."""
        return self.lora_B[index].float() @ self.lora_A[index].float() * self.scaling


class LoRAEmbedding(nn.Embedding):
    """nn.Embedding plus optional stacked adapters: lora_A [n, vocab, r], lora_B [n, r, H] (the roles swap)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, config: JinaV3Config) -> None:
        super().__init__(num_embeddings, embedding_dim)
        n, r = len(config.adapters), config.lora_rank
        self.lora_A = nn.Parameter(torch.empty(n, num_embeddings, r)) if n else None
        self.lora_B = nn.Parameter(torch.empty(n, r, embedding_dim)) if n else None
        self.scaling = config.lora_scale

    def forward(self, ids: torch.Tensor, sel: Selection | None) -> torch.Tensor:
        x = F.embedding(ids, self.weight)  # [B, T, H]
        if sel is None or self.lora_A is None:
            return x
        a = self.lora_A[sel.rows[:, None], ids] * sel.scale  # the rows of A[t] for these ids: [B, T, r]
        return torch.baddbmm(x, a, self.lora_B[sel.rows])  # x + a B[t]

    def delta(self, index: int) -> torch.Tensor:
        """[vocab, H] fp32: what adapter `index` adds to the table."""
        return self.lora_A[index].float() @ self.lora_B[index].float() * self.scaling


class Embeddings(nn.Module):
    def __init__(self, config: JinaV3Config) -> None:
        super().__init__()
        H = config.hidden_size
        self.word_embeddings = LoRAEmbedding(config.vocab_size, H, config)
        types = config.type_vocab_size
        self.token_type_embeddings = LoRAEmbedding(types, H, config) if types else None  # none when 0
        self.norm = nn.LayerNorm(H, eps=config.layer_norm_eps)  # emb_ln

    def forward(self, input_ids: torch.Tensor, sel: Selection | None) -> torch.Tensor:
        x = self.word_embeddings(input_ids, sel)  # [B, T, H]; no absolute positions
        if self.token_type_embeddings is not None:
            # single segment: token type 0 everywhere, one (adapted) row per text: [B, 1, H]
            x = x + self.token_type_embeddings(input_ids.new_zeros(input_ids.shape[0], 1), sel)
        return self.norm(x)


class SelfAttention(nn.Module):
    def __init__(self, config: JinaV3Config) -> None:
        super().__init__()
        H = config.hidden_size
        self.n_head = config.num_attention_heads
        self.qkv = LoRALinear(H, 3 * H, config)  # mixer.Wqkv
        self.out = LoRALinear(H, H, config)  # mixer.out_proj

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sel: Selection | None
    ) -> torch.Tensor:
        B, T, H = x.shape
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in self.qkv(x, sel).split(H, dim=-1))
        q = q * cos + rotate_half(q) * sin  # [B, nh, T, d]; cos, sin [T, d]
        k = k * cos + rotate_half(k) * sin
        y = attention(q, k, v, mask)  # [B, nh, T, d]
        return self.out(y.transpose(1, 2).reshape(B, T, H), sel)


class FeedForward(nn.Module):
    def __init__(self, config: JinaV3Config) -> None:
        super().__init__()
        self.up = LoRALinear(config.hidden_size, config.intermediate_size, config)  # mlp.fc1
        self.down = LoRALinear(config.intermediate_size, config.hidden_size, config)  # mlp.fc2
        self.act = activation(config.hidden_act)  # "gelu" is the exact erf form, as upstream's F.gelu

    def forward(self, x: torch.Tensor, sel: Selection | None) -> torch.Tensor:
        return self.down(self.act(self.up(x, sel)), sel)


class Layer(nn.Module):
    def __init__(self, config: JinaV3Config) -> None:
        super().__init__()
        self.attn = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # norm1
        self.mlp = FeedForward(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # norm2

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sel: Selection | None
    ) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, mask, cos, sin, sel))  # post-norm (flash-attn Block, prenorm=False)
        return self.mlp_norm(x + self.mlp(x, sel))


class JinaV3(nn.Module):
    learned_positions = False  # RoPE: any position can be computed

    def __init__(self, config: JinaV3Config) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.merged_adapter: int | None = None  # set by merge_adapter

    @property
    def max_positions(self) -> int:
        return self.config.max_position_embeddings

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return self.config.adapters

    def rope(self, T: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, d] for positions 0..T-1, computed in fp32 as upstream's RotaryEmbedding."""
        d = self.config.head_dim
        inv_freq = 1.0 / self.config.rotary_emb_base ** (torch.arange(0, d, 2, device=device).float() / d)
        freqs = torch.arange(T, device=device).float()[:, None] * inv_freq  # [T, d/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [T, d]: the same angle for dims i and i + d/2
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def select(self, adapter_ids: torch.Tensor | None, batch: int) -> Selection | None:
        """Validate adapter_ids [B] (-1 = base weights); None when no row needs a LoRA product."""
        if adapter_ids is None:
            return None
        if adapter_ids.shape != (batch,):
            raise ValueError(f"adapter_ids has shape {tuple(adapter_ids.shape)}, expected ({batch},)")
        low, high = torch.stack(torch.aminmax(adapter_ids)).tolist()  # a host sync when they are on the device
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
        weight = self.embeddings.word_embeddings.weight  # the ids may arrive on the host
        ids = adapter_ids.to(device=weight.device, dtype=torch.long)
        scale = torch.where(ids >= 0, self.config.lora_scale, 0.0).to(weight.dtype)
        return Selection(ids.clamp(min=0), scale[:, None, None])

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, adapter_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids [B, T], attention_mask [B, T] bool, right-padded, adapter_ids [B] -> token states [B, T, H]."""
        sel = self.select(adapter_ids, input_ids.shape[0])
        x = self.embeddings(input_ids, sel)
        cos, sin = self.rope(input_ids.shape[1], x.device, x.dtype)
        # padded keys are excluded outright (upstream adds -10000, which softmax turns into the same 0)
        mask = attention_mask[:, None, None, :]  # [B, 1, 1, T]
        for layer in self.layers:
            x = layer(x, mask, cos, sin, sel)
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
