"""Family detection: config.json features and tensor names decide, never `_name_or_path`."""

from __future__ import annotations

import pytest

from embedkit.errors import ModelLoadError
from embedkit.models.registry import detect_family

BERT_TENSORS = {"embeddings.word_embeddings.weight", "encoder.layer.0.intermediate.dense.weight"}
ROBERTA_TENSORS = {"roberta." + name for name in BERT_TENSORS}
JINA_TENSORS = {"embeddings.word_embeddings.weight", "encoder.layer.0.mlp.gated_layers.weight"}
JINA_CODE_TENSORS = {"encoder.layer.0.mlp.up_gated_layer.weight", "encoder.layer.0.attention.self.layer_norm_q.weight"}
GTE_TENSORS = {"new.embeddings.word_embeddings.weight", "new.encoder.layer.0.attention.qkv_proj.weight"}
JINA_V3_TENSORS = {"roberta.encoder.layers.0.mixer.Wqkv.bias"}
QWEN_TENSORS = {"model.layers.0.self_attn.q_proj.weight"}
DISTILBERT_TENSORS = {
    "distilbert.embeddings.word_embeddings.weight",
    "distilbert.transformer.layer.0.attention.q_lin.weight",
}

JINA_CONFIG = {
    "model_type": "bert",
    "architectures": ["JinaBertForMaskedLM"],
    "position_embedding_type": "alibi",
    "feed_forward_type": "geglu",
    "auto_map": {"AutoModel": "jinaai/jina-bert-implementation--modeling_bert.JinaBertModel"},
}
GTE_CONFIG = {
    "model_type": "new",
    "architectures": ["NewModel"],
    "position_embedding_type": "rope",
    "auto_map": {"AutoModel": "Alibaba-NLP/new-impl--modeling.NewModel"},
}


def without(config: dict, *keys: str) -> dict:
    return {key: value for key, value in config.items() if key not in keys}


CASES = [
    ("distilbert, MaskedLM", {"model_type": "distilbert"}, DISTILBERT_TENSORS, "distilbert"),
    ("distilbert by tensors alone", {}, DISTILBERT_TENSORS, "distilbert"),
    ("bert", {"model_type": "bert", "architectures": ["BertModel"]}, BERT_TENSORS, "bert"),
    ("bert, MaskedLM head", {"architectures": ["BertForMaskedLM"]}, {"bert." + n for n in BERT_TENSORS}, "bert"),
    (
        "jina, published name",
        {**JINA_CONFIG, "_name_or_path": "jinaai/jina-bert-implementation"},
        JINA_TENSORS,
        "jina_bert",
    ),
    ("jina, empty name", {**JINA_CONFIG, "_name_or_path": ""}, JINA_TENSORS, "jina_bert"),
    ("jina, local path name", {**JINA_CONFIG, "_name_or_path": "/data/ft/checkpoint-500"}, JINA_TENSORS, "jina_bert"),
    ("jina, renamed fine-tune", {**JINA_CONFIG, "_name_or_path": "acme/support-embedder"}, JINA_TENSORS, "jina_bert"),
    ("jina, no architectures", without(JINA_CONFIG, "architectures", "auto_map"), JINA_TENSORS, "jina_bert"),
    (
        "jina, only feed_forward_type",
        without(JINA_CONFIG, "position_embedding_type", "auto_map"),
        JINA_TENSORS,
        "jina_bert",
    ),
    (
        "jina code layout",
        {**JINA_CONFIG, "_name_or_path": "jinaai/jina-bert-v2-qk-post-norm"},
        JINA_CODE_TENSORS,
        "jina_bert",
    ),
    ("gte", GTE_CONFIG, GTE_TENSORS, "gte"),
    ("gte, no model_type", without(GTE_CONFIG, "model_type"), GTE_TENSORS, "gte"),
    ("gte, auto_map only", without(GTE_CONFIG, "model_type", "architectures"), GTE_TENSORS, "gte"),
    ("gte multilingual", {**GTE_CONFIG, "architectures": ["NewForTokenClassification"]}, GTE_TENSORS, "gte"),
    ("xlm-roberta", {"model_type": "xlm-roberta", "architectures": ["XLMRobertaModel"]}, BERT_TENSORS, "xlm_roberta"),
    ("xlm-roberta, prefixed", {"architectures": ["XLMRobertaForMaskedLM"]}, ROBERTA_TENSORS, "xlm_roberta"),
    ("config silent, tensors say gte", {"hidden_size": 32}, GTE_TENSORS, "gte"),
    (
        "jina-v3: no model_type, XLMRobertaModel, rotary",
        {"architectures": ["XLMRobertaModel"], "position_embedding_type": "rotary", "lora_adaptations": ["a"]},
        JINA_V3_TENSORS,
        "jina_v3",
    ),
    ("qwen3", {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}, QWEN_TENSORS, "qwen"),
]


@pytest.mark.parametrize(("config", "tensors", "family"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_detects_family(config: dict, tensors: set[str], family: str) -> None:
    detection = detect_family(config, tensors, "model")
    assert detection.family.name == family
    assert detection.reasons and all(isinstance(r, str) for r in detection.reasons)


ERRORS = [
    (
        "bert config, jina tensors",
        {"model_type": "bert", "architectures": ["BertModel"], "position_embedding_type": "absolute"},
        JINA_TENSORS,
        r"config.json says bert .* but the weights hold jina_bert tensors .*mlp.gated_layers.*"
        r"position_embedding_type 'alibi'",
    ),
    ("gte config, bert tensors", GTE_CONFIG, BERT_TENSORS, r"config.json says gte .* weights hold bert or xlm_roberta"),
    (
        "unknown model",
        {"model_type": "t5", "architectures": ["T5EncoderModel"]},
        set(),
        r"unsupported architecture \(model_type='t5'.*built-in families: bert, xlm_roberta, jina_bert, gte",
    ),
    (
        "nothing known, bert-like tensors",
        {},
        BERT_TENSORS,
        r"unsupported architecture.*tensors look like bert or xlm_roberta",
    ),
]


@pytest.mark.parametrize(("config", "tensors", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_detection_errors_name_what_was_seen(config: dict, tensors: set[str], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        detect_family(config, tensors, "model")


def test_every_family_hook_names_a_function_of_its_file() -> None:
    from embedkit.models.registry import FAMILIES, Hook

    for family in FAMILIES.values():
        hooks = [family.build, family.prepare_tokenizer, family.default_prompts, family.masked_lm]
        for hook in hooks:
            if hook is not None:
                assert isinstance(hook, Hook) and hook.module == family.module
                assert callable(hook.resolve())


def test_importing_the_registry_imports_no_model_code() -> None:
    import subprocess
    import sys

    code = (
        "import sys, embedkit.models.registry; print(any(m in sys.modules for m in ('torch', 'embedkit.models.bert')))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
