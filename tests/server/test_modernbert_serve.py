"""`embedkit serve` of tiny ModernBERT checkpoints, a real process on 127.0.0.1: /embed (with
modernbert-embed's prompts) equals local embedding, /rerank of a ModernBERT cross-encoder equals the local
reranker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import embedkit

from ..conftest import write_tiny_cross_encoder
from ..models.test_modernbert import write_modernbert
from .conftest import post, start_server, stop_server

TEXTS = [
    "how do vector databases index embeddings?",
    "x",
    "A local layer of ModernBERT sees only a few neighbours of each token, a global one sees them all.",
]
PROMPTS = {"query": "search_query: ", "document": "search_document: "}


def test_served_embeddings_equal_local(tmp_path: Path, minilm_dir: Path) -> None:
    embedder_dir = write_modernbert(tmp_path / "embed", minilm_dir, seed=9, pooling="mean", prompts=PROMPTS)
    server = start_server(tmp_path, str(embedder_dir), "--backend", "torch", "--device", "cpu")
    try:
        local = embedkit.load(embedder_dir, device="cpu", backend="torch")
        for prompt in (None, "query"):
            body = {"inputs": TEXTS, "normalize": False, **({"prompt_name": prompt} if prompt else {})}
            response = post(server, "/embed", body)
            assert response.status_code == 200, response.text
            served = np.asarray(response.json(), dtype=np.float32)
            np.testing.assert_allclose(served, local.embed(TEXTS, task=prompt, normalize=False), atol=1e-5)
    finally:
        stop_server(server)


@pytest.mark.slow  # a second server process; the cross-encoder's parity itself is tests/rerank's
def test_served_rerank_equals_local(tmp_path: Path) -> None:
    reranker_dir = write_tiny_cross_encoder(tmp_path / "rerank", "modernbert", 1, seed=9, max_length=64)
    server = start_server(tmp_path, str(reranker_dir), "--backend", "torch", "--device", "cpu")
    try:
        reranker = embedkit.load_reranker(reranker_dir, device="cpu", backend="torch")
        response = post(server, "/rerank", {"query": TEXTS[0], "texts": TEXTS[1:], "raw_scores": True})
        assert response.status_code == 200, response.text
        served_ranks = [(rank["index"], rank["score"]) for rank in response.json()]
        expected = [(r.index, r.score) for r in reranker.rerank(TEXTS[0], TEXTS[1:], raw_scores=True)]
        assert [index for index, _ in served_ranks] == [index for index, _ in expected]
        np.testing.assert_allclose([s for _, s in served_ranks], [s for _, s in expected], atol=1e-6)
    finally:
        stop_server(server)
