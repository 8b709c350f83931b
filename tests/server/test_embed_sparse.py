"""`embedkit serve` of a SPLADE model: TEI's /embed_sparse on a real server process, and the clients' embed_sparse.

The model is a tiny random inference-free SPLADE checkpoint in sentence-transformers' layout (Router: static
query weights, DistilBERT MLM documents), so both routes are exercised; the answers are compared with the
same encoder loaded in this process (itself held to sentence-transformers in tests/sparse/test_splade.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from embedkit import AsyncTEIClient, InputError, TEIClient
from embedkit.sparse import SparseVector, load_sparse

from ..sparse.test_splade import write_splade
from .conftest import API_KEY, RunningServer, assert_tei_error, post, start_server, stop_server

TEXTS = ["Sparse vectors beside the dense ones.", "hello", "a longer passage about Qdrant, " * 12]


@pytest.fixture(scope="module")
def splade_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("splade-serve")
    return write_splade(
        root / "model", minilm_dir, kind="distilbert", activation="log1p_relu", inference_free=True, seed=7
    )


@pytest.fixture(scope="module")
def sparse_server(tmp_path_factory: pytest.TempPathFactory, splade_dir: Path) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("serve-sparse"), str(splade_dir), "--backend", "torch", "--max-client-batch-size", "2"
    )
    yield running
    stop_server(running)


def as_vectors(body: list[list[dict]]) -> list[SparseVector]:
    return [SparseVector([e["index"] for e in entries], [e["value"] for e in entries]) for entries in body]


def assert_same(ours: list[SparseVector], theirs: list[SparseVector]) -> None:
    assert len(ours) == len(theirs)
    for mine, other in zip(ours, theirs, strict=True):
        assert mine.indices == other.indices
        assert mine.values == pytest.approx(other.values, abs=1e-6)


def test_info_says_splade(sparse_server: RunningServer, splade_dir: Path, auth: dict[str, str]) -> None:
    import httpx

    info = httpx.get(f"{sparse_server.url}/info", headers=auth).json()
    assert info["model_type"] == {"embedding": {"pooling": "splade"}}
    assert info["model_id"] == str(splade_dir) and info["max_input_length"] == 64
    assert {"query", "document"} <= set(info["prompts"])


def test_embed_sparse_answers_tei_shape(sparse_server: RunningServer, splade_dir: Path) -> None:
    local = load_sparse(splade_dir, backend="torch")
    response = post(sparse_server, "/embed_sparse", {"inputs": TEXTS[:2]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert all(set(entry) == {"index", "value"} for entries in body for entry in entries)
    assert_same(as_vectors(body), local.embed_documents(TEXTS[:2]))
    single = post(sparse_server, "/embed_sparse", {"inputs": TEXTS[1]}).json()  # one text, TEI's single form
    assert_same(as_vectors(single), local.embed_documents(TEXTS[1:2]))
    queries = post(sparse_server, "/embed_sparse", {"inputs": TEXTS[:2], "prompt_name": "query"}).json()
    assert_same(as_vectors(queries), local.embed_queries(TEXTS[:2]))


def test_clients_embed_sparse(sparse_server: RunningServer, splade_dir: Path) -> None:
    local = load_sparse(splade_dir, backend="torch")
    texts = TEXTS * 2  # 6 texts: three requests of the server's batch size 2
    with TEIClient(sparse_server.url, api_key=API_KEY) as client:
        assert_same(client.embed_sparse(texts), local.embed_documents(texts))
        assert_same(client.embed_sparse(texts, prompt_name="query"), local.embed_queries(texts))
        with pytest.raises(InputError, match="texts is empty"):
            client.embed_sparse([])

    async def run() -> list[SparseVector]:
        async with AsyncTEIClient(sparse_server.url, api_key=API_KEY) as client:
            return await client.embed_sparse(texts, prompt_name="query")

    import asyncio

    assert_same(asyncio.run(run()), local.embed_queries(texts))


def test_errors_in_tei_shape(sparse_server: RunningServer) -> None:
    assert_tei_error(post(sparse_server, "/embed_sparse", {"inputs": []}), 400, "Empty")
    message = assert_tei_error(
        post(sparse_server, "/embed_sparse", {"inputs": TEXTS[2], "truncate": False}), 422, "Validation"
    )
    assert "over this model's limit of 64" in message
    message = assert_tei_error(
        post(sparse_server, "/embed_sparse", {"inputs": "x", "prompt_name": "nope"}), 422, "Validation"
    )
    assert "prompt_name='nope'" in message
    message = assert_tei_error(post(sparse_server, "/embed", {"inputs": "x"}), 422, "Validation")
    assert "/embed_sparse" in message
    message = assert_tei_error(post(sparse_server, "/rerank", {"query": "q", "texts": ["a"]}), 424, "Backend")
    assert message == "Backend error: model is not a re-ranker model"  # TEI's words
    assert_tei_error(post(sparse_server, "/embed_sparse", {"inputs": ["a", "b", "c"]}), 422, "Validation")
    assert_tei_error(post(sparse_server, "/embed_sparse", {"inputs": [101, 102]}), 422, "Validation")
