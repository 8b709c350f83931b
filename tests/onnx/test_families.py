"""Every built-in family exports to ONNX and gives the torch backend's vectors (cosine >= 0.99999, fp32).

Checkpoints are the model tests' tiny random ones in each family's published layout; the torch
backend they are compared with is itself checked against transformers' implementations there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import embedkit

from ..conftest import write_tiny_bert
from ..models.test_gemma3 import write_gemma3
from ..models.test_gte import write_gte
from ..models.test_jina_bert import write_tiny_jina
from ..models.test_jina_v3 import FIXTURE_MODEL, TASKS, write_original
from ..models.test_modernbert import write_modernbert
from ..models.test_mpnet import write_mpnet
from ..models.test_nomic_bert import write_nomic
from ..models.test_qwen import QUERY_INSTRUCTION, QWEN2_CONFIG, QWEN3_CONFIG, write_qwen
from ..models.test_xlm_roberta import write_tiny_xlm_roberta

pytest.importorskip("onnxruntime")

TEXTS = [
    "x",
    "how do vector databases index embeddings?",
    "Die Katze schläft auf dem Sofa, und der Hund bellt draußen im Garten.",
    "A long passage about retrieval, chunking and the way batches are padded. " * 5,
    "def search(q):\n    return index.query(q, k=10)",
    "hello world",
]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def both_backends(model_dir: Path, cache: Path, **kwargs: object) -> tuple[embedkit.LocalEmbedder, ...]:
    torch_side = embedkit.load(model_dir, device="cpu", backend="torch", **kwargs)
    onnx_side = embedkit.load(model_dir, device="cpu", backend="onnx", onnx_cache_dir=cache, **kwargs)
    assert onnx_side.backend == "onnx" and "backend='onnx'" in repr(onnx_side)
    return torch_side, onnx_side


WRITERS = {
    "bert": lambda target, tok: write_tiny_bert(target, tok, seed=3),
    "xlm_roberta": lambda target, tok: write_tiny_xlm_roberta(target, tok, seed=4),
    "jina_bert (ALiBi)": lambda target, tok: write_tiny_jina(target, tok, seed=11),
    "jina_bert (qk-norm code layout)": lambda target, tok: write_tiny_jina(target, tok, layout="code", seed=12),
    "gte (RoPE, NTK)": lambda target, tok: write_gte(target, tok, rope_theta=500000.0, ntk_factor=2.0, seed=6),
    "gte-Qwen2 (bidirectional)": lambda target, _: write_qwen(target, QWEN2_CONFIG, seed=1, lm_head=True, shards=2),
    "Qwen3 (causal)": lambda target, _: write_qwen(
        target, QWEN3_CONFIG, seed=2, prompts={"query": QUERY_INSTRUCTION, "document": ""}
    ),
    "nomic_bert (RoPE, SwiGLU, card prefixes)": lambda target, tok: write_nomic(target, tok, seed=4),
    "EmbeddingGemma (sliding window, Dense)": lambda target, _: write_gemma3(target, seed=5),
    "modernbert (sliding window, prompts)": lambda target, tok: write_modernbert(
        target, tok, seed=8, pooling="mean", prompts={"query": "search_query: ", "document": "search_document: "}
    ),
    "mpnet (relative position bias)": lambda target, tok: write_mpnet(target, tok, seed=8),
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_family_matches_torch(tmp_path: Path, minilm_dir: Path, name: str) -> None:
    model_dir = WRITERS[name](tmp_path / "model", minilm_dir)
    torch_side, onnx_side = both_backends(model_dir, tmp_path / "cache")
    assert onnx_side.describe()["family"] == torch_side.describe()["family"]
    for task in (None, "query"):
        want, got = torch_side.embed(TEXTS, task=task), onnx_side.embed(TEXTS, task=task)
        assert got.shape == want.shape
        assert min_cosine(got, want) >= 0.99999, name
    # padding: each text alone (no padding at all) equals its row in the mixed-length batch
    alone = np.stack([onnx_side.embed([text])[0] for text in TEXTS])
    assert min_cosine(alone, onnx_side.embed(TEXTS)) >= 0.99999


@pytest.mark.parametrize(("config", "causal"), [(QWEN3_CONFIG, True), (QWEN2_CONFIG, False)])
def test_exported_attention_keeps_its_direction(tmp_path: Path, config: dict, causal: bool) -> None:
    """Under causal attention (Qwen3) a token's state cannot depend on later tokens; under gte-Qwen2's
    bidirectional attention it must."""
    model_dir = write_qwen(tmp_path / "model", config, seed=2)
    graph = embedkit.load(model_dir, device="cpu", backend="onnx", onnx_cache_dir=tmp_path / "cache").model
    ids = torch.tensor([[11, 12, 13, 14, 15], [11, 12, 13, 14, 99]])
    states = graph.forward_padded(ids, torch.ones_like(ids, dtype=torch.bool), torch.arange(5).expand(2, 5))
    same_prefix = torch.allclose(states[0, :4], states[1, :4], atol=1e-5)
    assert same_prefix == causal


jina_v3 = pytest.mark.skipif(not FIXTURE_MODEL.is_dir(), reason="../shared/fixtures/jina-embeddings-v3 is absent")


@jina_v3
def test_jina_v3_every_task_matches_torch(tmp_path: Path) -> None:
    model_dir = write_original(tmp_path / "jina-v3", seed=5)
    torch_side, onnx_side = both_backends(model_dir, tmp_path / "cache")
    for task in [None, *TASKS]:
        assert min_cosine(onnx_side.embed(TEXTS, task=task), torch_side.embed(TEXTS, task=task)) >= 0.99999, task


@jina_v3
def test_jina_v3_graphs_are_built_per_task_on_first_use(tmp_path: Path) -> None:
    model_dir = write_original(tmp_path / "jina-v3", seed=5)
    cache = tmp_path / "cache"
    embedder = embedkit.load(model_dir, device="cpu", backend="onnx", onnx_cache_dir=cache)

    def entries() -> set[str]:
        return {json.loads((path / "manifest.json").read_text())["key"]["adapter"] for path in cache.iterdir()}

    assert entries() == {"base"}
    embedder.embed(TEXTS, task="retrieval.query")
    assert entries() == {"base", "retrieval.query"}
    # one call mixing tasks equals each task's own call, row by row
    tasks = ["retrieval.query", "retrieval.passage", None, "separation", "retrieval.query", "text-matching"]
    mixed = embedder.embed(TEXTS, task=tasks)
    for index, task in enumerate(tasks):
        np.testing.assert_allclose(mixed[index], embedder.embed([TEXTS[index]], task=task)[0], atol=2e-5)
    assert entries() == {"base", "retrieval.query", "retrieval.passage", "separation", "text-matching"}


@jina_v3
def test_jina_v3_merged_adapter_exports_one_graph(tmp_path: Path) -> None:
    model_dir = write_original(tmp_path / "jina-v3", seed=5)
    cache = tmp_path / "cache"
    reference = embedkit.load(model_dir, device="cpu", backend="torch")
    merged = embedkit.load(
        model_dir, device="cpu", backend="onnx", onnx_cache_dir=cache, default_task="retrieval.passage", merge_lora=True
    )
    assert [json.loads((path / "manifest.json").read_text())["key"]["adapter"] for path in cache.iterdir()] == [
        "retrieval.passage"
    ]
    got = merged.embed(TEXTS)
    assert min_cosine(got, reference.embed(TEXTS, task="retrieval.passage")) >= 0.99999
    with pytest.raises(embedkit.InputError):
        merged.embed(TEXTS, task="separation")
