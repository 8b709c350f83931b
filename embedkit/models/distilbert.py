"""DistilBERT encoder (msmarco-distilbert-*, SPLADE and opensearch neural-sparse models) in plain PyTorch.

Sanh et al. 2019; transformers' `DistilBertModel`: BERT's post-LN transformer with fewer layers, no
token-type embeddings and LayerNorm eps fixed at 1e-12, so it runs as `Bert` with its own config names
(`dim`, `n_layers`, `n_heads`, `hidden_dim`, `activation`) and its own tensor names, declared here:
`embeddings.{word,position}_embeddings`, `transformer.layer.N.attention.{q,k,v,out}_lin`,
`transformer.layer.N.{sa_layer_norm,ffn.lin1,ffn.lin2,output_layer_norm}`. Checkpoints saved from a head
class carry a `distilbert.` prefix; `DistilBertForMaskedLM`'s head (`vocab_transform`, `vocab_layer_norm`,
`vocab_projector` tied to the word embeddings) is read by `masked_lm` for SPLADE.
"""

from __future__ import annotations

from embedkit.models.bert import EMBEDDINGS_RENAMES, Bert, BertConfig
from embedkit.models.loading import TensorLayout, config_from_dict
from embedkit.models.mlm import MaskedLM, MLMHeadNames, build_masked_lm

__all__ = ["LAYOUT", "MLM_HEAD", "build", "masked_lm"]

# DistilBertConfig's names -> BertConfig's
_CONFIG_NAMES = {
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "hidden_dim": "intermediate_size",
    "activation": "hidden_act",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position_embeddings",
    "pad_token_id": "pad_token_id",
}
# DistilBertConfig's defaults (transformers), for a config.json that leaves them out
_DEFAULTS = {
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "n_layers": 6,
    "n_heads": 12,
    "dim": 768,
    "hidden_dim": 3072,
    "activation": "gelu",
    "pad_token_id": 0,
}
EPS = 1e-12  # every DistilBERT LayerNorm; not a config field

LAYOUT = TensorLayout(
    anchor="embeddings.word_embeddings.weight",
    prefixes=("", "distilbert."),
    ignore=(r"embeddings\.position_ids", r"vocab_.*"),
    renames={
        "embeddings": EMBEDDINGS_RENAMES,
        "attention": (
            ("transformer.layer.{n}.attention.q_lin.", "layers.{n}.attn.query."),
            ("transformer.layer.{n}.attention.k_lin.", "layers.{n}.attn.key."),
            ("transformer.layer.{n}.attention.v_lin.", "layers.{n}.attn.value."),
            ("transformer.layer.{n}.attention.out_lin.", "layers.{n}.attn.out."),
            ("transformer.layer.{n}.sa_layer_norm.", "layers.{n}.attn_norm."),
        ),
        "mlp": (
            ("transformer.layer.{n}.ffn.lin1.", "layers.{n}.mlp.up."),
            ("transformer.layer.{n}.ffn.lin2.", "layers.{n}.mlp.down."),
            ("transformer.layer.{n}.output_layer_norm.", "layers.{n}.mlp_norm."),
        ),
    },
)

# DistilBertForMaskedLM's head; `vocab_projector.weight` is tied to the word embeddings
MLM_HEAD = MLMHeadNames(
    encoder_prefix="distilbert.",
    dense="vocab_transform.",
    norm="vocab_layer_norm.",
    bias=("vocab_projector.bias",),
    decoder_weight="vocab_projector.weight",
)


def _bert_config(config: dict, source: str) -> BertConfig:
    raw = {ours: config.get(theirs, _DEFAULTS[theirs]) for theirs, ours in _CONFIG_NAMES.items()}
    raw.update(type_vocab_size=0, layer_norm_eps=EPS)
    return config_from_dict(BertConfig, raw, f"{source}/config.json")


def build(config: dict, tensor_names: set[str], source: str) -> tuple[Bert, TensorLayout]:
    """The model and tensor layout for a DistilBERT checkpoint (`Bert` without token types)."""
    return Bert(_bert_config(config, source)), LAYOUT


def masked_lm(config: dict, tensor_names: set[str], source: str) -> tuple[MaskedLM, TensorLayout]:
    """The encoder with its MLM head and the layout of a `DistilBertForMaskedLM` checkpoint."""
    encoder, _ = build(config, tensor_names, source)
    return build_masked_lm(
        encoder,
        LAYOUT,
        MLM_HEAD,
        config=config,
        hidden_act=encoder.config.hidden_act,
        eps=EPS,
        tensor_names=tensor_names,
        source=source,
    )
