"""XLM-RoBERTa encoder (multilingual-e5, bge-m3 dense, paraphrase-multilingual-*) in plain PyTorch.

The same post-LN transformer and tensor names as BERT (Conneau et al. 2019; transformers'
`XLMRobertaModel`), with one difference that matters: learned positions are offset by the padding
index, so the first real token sits at position `pad_token_id + 1` and a 514-row table serves
512 tokens. Checkpoints saved from a head class carry a `roberta.` prefix and an `lm_head`.
"""

from __future__ import annotations

from dataclasses import replace

from embedkit.models.bert import LAYOUT as BERT_LAYOUT
from embedkit.models.bert import Bert, BertConfig
from embedkit.models.classifier import ClassifierNames, SequenceClassifier, build_sequence_classifier
from embedkit.models.loading import TensorLayout, config_from_dict

__all__ = ["CLASSIFIER", "LAYOUT", "XLMRoberta", "build", "sequence_classifier"]

LAYOUT = replace(
    BERT_LAYOUT,
    prefixes=("", "roberta.", "model."),
    ignore=(*BERT_LAYOUT.ignore, r"lm_head\..*"),
)

# XLMRobertaForSequenceClassification (bge-reranker-v2-m3): no pooler; its `classifier` holds both layers,
# over <s>
CLASSIFIER = ClassifierNames(encoder_prefix="roberta.", dense="classifier.dense.", out="classifier.out_proj.")


class XLMRoberta(Bert):
    def __init__(self, config: BertConfig) -> None:
        # the batch's positions are 0-based; XLM-R's table starts real tokens at padding_idx + 1
        super().__init__(config, position_offset=config.pad_token_id + 1)

    @property
    def max_positions(self) -> int:
        return self.config.max_position_embeddings - self.config.pad_token_id - 1


def build(config: dict, tensor_names: set[str], source: str) -> tuple[XLMRoberta, TensorLayout]:
    """The model and tensor layout for an XLM-RoBERTa checkpoint."""
    defaults = {"pad_token_id": 1, "type_vocab_size": 1, "layer_norm_eps": 1e-5}  # XLMRobertaConfig's, not BERT's
    return XLMRoberta(config_from_dict(BertConfig, config, f"{source}/config.json", defaults=defaults)), LAYOUT


def sequence_classifier(config: dict, tensor_names: set[str], source: str) -> tuple[SequenceClassifier, TensorLayout]:
    """The encoder with its classification head and the layout of an `XLMRobertaForSequenceClassification`
    checkpoint."""
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
