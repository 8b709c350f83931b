"""The known-prompt table the remote client uses when a server lists no prompts (TEI's /info has none)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedkit.models import qwen
from embedkit.tasks import known_prompts

JINA_V3_CONFIG = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "jina-embeddings-v3" / "model"


@pytest.mark.parametrize(
    ("model_id", "query"),
    [
        ("Qwen/Qwen3-Embedding-0.6B", qwen.default_prompts({"model_type": "qwen3"})["query"]),
        ("qwen/qwen3-embedding-8b", qwen.default_prompts({"model_type": "qwen3"})["query"]),
        ("Alibaba-NLP/gte-Qwen2-1.5B-instruct", qwen.default_prompts({"model_type": "qwen2"})["query"]),
        ("/models/cache/Qwen/Qwen3-Embedding-4B", qwen.default_prompts({"model_type": "qwen3"})["query"]),
        ("intfloat/e5-base-v2", "query: "),
        ("intfloat/multilingual-e5-large", "query: "),
        ("BAAI/bge-small-en-v1.5", "Represent this sentence for searching relevant passages: "),
        ("sentence-transformers/all-MiniLM-L6-v2", ""),
        ("sentence-transformers/all-mpnet-base-v2", ""),
        ("sentence-transformers/multi-qa-mpnet-base-dot-v1", ""),
        ("sentence-transformers/multi-qa-mpnet-base-cos-v1", ""),
    ],
)
def test_query_prefix_agrees_with_the_local_families(model_id: str, query: str) -> None:
    entry = known_prompts(model_id)
    assert entry is not None, model_id
    assert entry.table().prefix("query") == query


def test_specific_ids_win_over_patterns() -> None:
    entry = known_prompts("intfloat/multilingual-e5-large-instruct")
    assert entry is not None and entry.table().prefix("query").startswith("Instruct: ")
    assert entry.table().prefix("document") == ""


def test_unknown_models_have_no_entry() -> None:
    assert known_prompts("my-org/private-model") is None
    assert known_prompts(None) is None
    assert known_prompts("") is None


def test_jina_v3_entry_matches_its_config_and_names_its_adapters() -> None:
    entry = known_prompts("jinaai/jina-embeddings-v3")
    assert entry is not None
    assert set(entry.adapters) == set(entry.prompts)
    config = JINA_V3_CONFIG / "config.json"
    if config.exists():
        assert entry.prompts == json.loads(config.read_text())["task_instructions"]
