"""config.json features + tensor names -> model family: the only architecture decision.

Two independent readings are reconciled: what config.json claims (model_type, architectures,
position_embedding_type, feed_forward_type, auto_map targets) and what the safetensors header
holds (tensor name patterns). They must agree; a checkpoint whose config and tensors disagree is
an error naming both. The name a checkpoint records for itself is never read: a fine-tuned or
re-uploaded checkpoint keeps its architecture whatever its name says (TEI <= 1.6 chose JinaBERT by
that string and broke).

A `Family` names its file's hooks as fields: `build(config, tensor_names, source) -> (module,
TensorLayout)` always, `prepare_tokenizer(tokenizer, config) -> tokenizer` and `default_prompts(config)
-> {task: prefix}` where the family needs them, and `masked_lm(config, tensor_names, source) -> (module,
TensorLayout)` for families whose masked-LM checkpoints embedkit reads (SPLADE), and
`sequence_classifier(config, tensor_names, source) -> (module, TensorLayout)` for those whose
sequence-classification checkpoints it reads (cross-encoder rerankers). The family file is
imported on a hook's first call, so importing the registry imports no model code (and no torch).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from embedkit.errors import ModelLoadError

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from torch import nn

    from embedkit.models.base import EncoderModel
    from embedkit.models.loading import TensorLayout

__all__ = ["FAMILIES", "Detection", "Family", "Hook", "detect_family"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hook:
    """`module.name`, a function of a family file, imported on its first call."""

    module: str
    name: str

    def resolve(self) -> Callable[..., Any]:
        function = vars(importlib.import_module(self.module)).get(self.name)
        if not callable(function):
            raise ModelLoadError(f"{self.module} has no function {self.name}, which its registry entry names")
        return function

    def __call__(self, *args: Any) -> Any:
        return self.resolve()(*args)


@dataclass(frozen=True)
class Family:
    """One architecture: its file's hooks and its defaults. The loader calls the hooks; None = not needed."""

    name: str
    module: str  # the family file
    default_pooling: tuple[str, ...]  # when the checkpoint has no sentence-transformers pooling config
    # (config, tensor_names, source) -> (module on the meta device, its tensor layout)
    build: Callable[[dict, set[str], str], tuple[EncoderModel, TensorLayout]]
    # (tokenizer, config) -> the tokenizer the weights were trained with (gte-Qwen2's end-of-text token)
    prepare_tokenizer: Callable[[Tokenizer, dict], Tokenizer] | None = None
    # config -> {task: prefix} when config_sentence_transformers.json has no prompts (Qwen, jina-v3)
    default_prompts: Callable[[dict], dict[str, str]] | None = None
    # (config, tensor_names, source) -> (the encoder with its MLM head, the layout): SPLADE's models
    masked_lm: Callable[[dict, set[str], str], tuple[nn.Module, TensorLayout]] | None = None
    # (config, tensor_names, source) -> (the encoder with its classification head, the layout): cross-encoders
    sequence_classifier: Callable[[dict, set[str], str], tuple[nn.Module, TensorLayout]] | None = None


def _family(name: str, default_pooling: tuple[str, ...], *hooks: str) -> Family:
    module = f"embedkit.models.{name}"
    named = {hook: Hook(module, hook) for hook in hooks}
    return Family(name, module, default_pooling, build=Hook(module, "build"), **named)


FAMILIES: dict[str, Family] = {
    "bert": _family("bert", ("mean",), "masked_lm", "sequence_classifier"),
    "xlm_roberta": _family("xlm_roberta", ("mean",), "sequence_classifier"),
    "jina_bert": _family("jina_bert", ("mean",)),
    "gte": _family("gte", ("cls",), "sequence_classifier"),
    "jina_v3": _family("jina_v3", ("mean",), "default_prompts"),
    "qwen": _family("qwen", ("lasttoken",), "prepare_tokenizer", "default_prompts"),
    "distilbert": _family("distilbert", ("mean",), "masked_lm"),
    "nomic_bert": _family("nomic_bert", ("mean",), "default_prompts"),
    "gemma3": _family("gemma3", ("mean",), "prepare_tokenizer"),
    # mean: what sentence-transformers pools a checkpoint without 1_Pooling with (gte-modernbert's says cls)
    "modernbert": _family("modernbert", ("mean",), "sequence_classifier"),
    "mpnet": _family("mpnet", ("mean",)),
}


@dataclass(frozen=True)
class Detection:
    family: Family
    reasons: tuple[str, ...]  # what in config.json and the tensors decided it


# -- what config.json claims ----------------------------------------------------------------------


def _auto_map_targets(config: dict[str, Any]) -> str:
    auto_map = config.get("auto_map") or {}
    return " ".join(str(v) for v in auto_map.values()) if isinstance(auto_map, dict) else ""


def _architectures(config: dict[str, Any]) -> list[str]:
    value = config.get("architectures") or []
    return [str(a) for a in value] if isinstance(value, list) else []


# (family, test, why) in priority order; the first match is the config's claim
_CONFIG_RULES: list[tuple[str, Callable[[dict[str, Any]], bool], str]] = [
    ("jina_v3", lambda c: bool(c.get("lora_adaptations")), "lora_adaptations is set (jina-embeddings-v3)"),
    ("jina_v3", lambda c: "XLMRobertaLoRA" in _auto_map_targets(c), "auto_map targets XLMRobertaLoRA"),
    ("jina_v3", lambda c: c.get("position_embedding_type") == "rotary", "position_embedding_type is 'rotary'"),
    ("jina_v3", lambda c: c.get("model_type") == "jina_embeddings_v3", "model_type is 'jina_embeddings_v3'"),
    ("gte", lambda c: c.get("model_type") in ("new", "gte"), "model_type is 'new'/'gte'"),
    ("gte", lambda c: any(a.startswith(("New", "Gte")) for a in _architectures(c)), "architectures name New*/Gte*"),
    ("gte", lambda c: "new-impl" in _auto_map_targets(c), "auto_map targets Alibaba-NLP/new-impl"),
    ("jina_bert", lambda c: c.get("position_embedding_type") == "alibi", "position_embedding_type is 'alibi'"),
    ("jina_bert", lambda c: c.get("feed_forward_type") in ("geglu", "reglu"), "feed_forward_type is a GLU"),
    ("jina_bert", lambda c: "jina-bert" in _auto_map_targets(c), "auto_map targets jinaai/jina-bert-*"),
    ("jina_bert", lambda c: any(a.startswith("JinaBert") for a in _architectures(c)), "architectures name JinaBert*"),
    # NomicBERT's keys are its own (model_type, NomicBert* classes, the nomic-bert-2048 remote code), so
    # these rules capture no other family's config; ahead of the BERT rule all the same, as a fine-tune
    # could name Bert* heads in `architectures` while keeping model_type "nomic_bert"
    ("nomic_bert", lambda c: c.get("model_type") == "nomic_bert", "model_type is 'nomic_bert'"),
    (
        "nomic_bert",
        lambda c: any(a.startswith("NomicBert") for a in _architectures(c)),
        "architectures name NomicBert*",
    ),
    ("nomic_bert", lambda c: "nomic-bert" in _auto_map_targets(c), "auto_map targets nomic-ai/nomic-bert-*"),
    # ModernBERT: its own model_type and ModernBert* classes (never a prefix of another family's names, and
    # "ModernBert..." does not start with "Bert"), so the rule's place cannot capture another family's configs
    (
        "modernbert",
        lambda c: c.get("model_type") == "modernbert" or any(a.startswith("ModernBert") for a in _architectures(c)),
        "model_type/architectures name ModernBERT",
    ),
    ("qwen", lambda c: c.get("model_type") in ("qwen2", "qwen3"), "model_type is qwen2/qwen3"),
    (
        "gemma3",
        lambda c: c.get("model_type") == "gemma3_text" or "Gemma3TextModel" in _architectures(c),
        "model_type/architectures name a Gemma3 text model (gemma3_text / Gemma3TextModel)",
    ),
    (
        "distilbert",
        lambda c: c.get("model_type") == "distilbert" or any(a.startswith("DistilBert") for a in _architectures(c)),
        "model_type/architectures name DistilBERT",
    ),
    # model_type "mpnet" and MPNet* classes belong to no other family; before the BERT-likes below,
    # which MPNet's BERT-shaped config keys must not reach
    (
        "mpnet",
        lambda c: c.get("model_type") == "mpnet" or any(a.startswith("MPNet") for a in _architectures(c)),
        "model_type/architectures name MPNet",
    ),
    (
        "xlm_roberta",
        lambda c: (
            c.get("model_type") in ("xlm-roberta", "roberta", "camembert")
            or any(a.startswith(("XLMRoberta", "Roberta", "Camembert")) for a in _architectures(c))
        ),
        "model_type/architectures name (XLM-)RoBERTa",
    ),
    (
        "bert",
        lambda c: c.get("model_type") == "bert" or any(a.startswith("Bert") for a in _architectures(c)),
        "model_type/architectures name BERT",
    ),
]

# -- what the tensors hold ------------------------------------------------------------------------

# a name suffix present only in checkpoints of these families
_TENSOR_SIGNS: list[tuple[frozenset[str], str]] = [
    # ModernBERT's GeGLU input `layers.N.mlp.Wi`, not its `attn.Wqkv`: NomicBERT's `encoder.layers.N.attn.Wqkv`
    # ends with that too (its MLP is `fc11`/`fc12`). First, so that a Wqkv sign cannot claim ModernBERT's tensors
    (frozenset({"modernbert"}), "layers.0.mlp.Wi.weight"),
    (frozenset({"jina_v3"}), "encoder.layers.0.mixer.Wqkv.bias"),
    (frozenset({"gte"}), "encoder.layer.0.attention.qkv_proj.weight"),
    (frozenset({"gte"}), "encoder.layer.0.attention.q_proj.weight"),
    (frozenset({"jina_bert"}), "encoder.layer.0.mlp.gated_layers.weight"),
    (frozenset({"jina_bert"}), "encoder.layer.0.mlp.up_gated_layer.weight"),
    # the gated MLP's fc11 beside nomic's `encoder.layers.N.attn.Wqkv` (jina-v3 has `mixer.Wqkv`,
    # ModernBERT `model.layers.N.attn.Wqkv` with `mlp.Wi`, nomic-embed-text-v2-moe's MoE layers no fc11)
    (frozenset({"nomic_bert"}), "encoder.layers.0.mlp.fc11.weight"),
    # before qwen's: Gemma3 also has layers.0.self_attn.q_proj (and q_norm, as Qwen3); this norm is Gemma's own
    (frozenset({"gemma3"}), "layers.0.pre_feedforward_layernorm.weight"),
    (frozenset({"qwen"}), "layers.0.self_attn.q_proj.weight"),
    (frozenset({"distilbert"}), "transformer.layer.0.attention.q_lin.weight"),
    # before BERT's sign: an MPNet checkpoint also holds `intermediate.dense`
    (frozenset({"mpnet"}), "encoder.relative_attention_bias.weight"),
    (frozenset({"mpnet"}), "encoder.layer.0.attention.attn.q.weight"),
    (frozenset({"bert", "xlm_roberta"}), "encoder.layer.0.intermediate.dense.weight"),
]


def _tensor_claim(names: set[str]) -> tuple[frozenset[str], str] | None:
    for families, suffix in _TENSOR_SIGNS:
        if any(name == suffix or name.endswith("." + suffix) for name in names):
            return families, suffix
    return None


def _describe(config: dict[str, Any]) -> str:
    keys = ("model_type", "architectures", "position_embedding_type", "feed_forward_type")
    return ", ".join(f"{key}={config.get(key)!r}" for key in keys)


def detect_family(config: dict[str, Any], tensor_names: set[str], source: str) -> Detection:
    """The family that implements this checkpoint, with the reasons; ModelLoadError otherwise."""
    claim = next(((family, why) for family, test, why in _CONFIG_RULES if test(config)), None)
    seen = _tensor_claim(tensor_names) if tensor_names else None
    if claim and seen:
        family, why = claim
        families, suffix = seen
        if family not in families:
            tensor_side = " or ".join(sorted(families))
            raise ModelLoadError(
                f"{source}: config.json says {family} ({why}) but the weights hold {tensor_side} tensors "
                f"(e.g. {suffix}). Fix config.json to describe the weights (for JinaBERT: "
                "position_embedding_type 'alibi' and feed_forward_type 'geglu'), or point at the right weights."
            )
        return Detection(FAMILIES[family], (f"config.json: {why}", f"tensors: {suffix}"))
    if claim:
        family, why = claim
        reasons = (f"config.json: {why}", "tensors: not inspected (no safetensors header)")
        return Detection(FAMILIES[family], reasons)
    if seen and len(seen[0]) == 1:
        (family,) = seen[0]
        log.warning(
            "%s: config.json names no known architecture (%s); tensors say %s", source, _describe(config), family
        )
        return Detection(FAMILIES[family], ("config.json: no known architecture fields", f"tensors: {seen[1]}"))
    known = ", ".join(FAMILIES)
    raise ModelLoadError(
        f"{source}: unsupported architecture ({_describe(config)}"
        + (f"; tensors look like {' or '.join(sorted(seen[0]))}" if seen else "")
        + f"); built-in families: {known}"
    )
