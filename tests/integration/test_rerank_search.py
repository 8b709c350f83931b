"""Reranked search on both Qdrant engines and from the command line: the vector search's `fetch_k` candidates
reordered by a real (tiny, randomly initialised) cross-encoder, exactly as the reranker orders them alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from embedkit.cli import main
from embedkit.errors import InputError, StoreError
from embedkit.ingestion import ingest, load_directory
from embedkit.rerank import load_reranker
from embedkit.sinks import Point, QdrantSink
from embedkit.sparse import BM25Encoder

from ..conftest import write_tiny_cross_encoder

QUERY = "how do I water tomato plants"


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory):
    return load_reranker(write_tiny_cross_encoder(tmp_path_factory.mktemp("ce") / "ce"), device="cpu")


@pytest.fixture(scope="module")
def collections(tmp_path_factory: pytest.TempPathFactory, example_docs: Path, minilm) -> Path:
    """The example docs ingested once per engine, with BM25 vectors so hybrid search can be reranked too."""
    root = tmp_path_factory.mktemp("rerank")
    shutil.copytree(example_docs, root / "docs")
    for engine in ("edge", "client-local"):
        with QdrantSink("kb", path=root / engine, engine=engine) as sink:
            ingest(load_directory(root / "docs", source="docs"), minilm, sink, progress=False, sparse=BM25Encoder())
    return root


@pytest.mark.parametrize("engine", ["edge", "client-local"])
@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_reranked_search_returns_the_rerankers_order_of_the_candidates(
    collections: Path, minilm, reranker, engine: str, mode: str
) -> None:
    vector = minilm.embed_query(QUERY)
    sparse = BM25Encoder().embed_query(QUERY)
    # every point a candidate: documents tied in the hybrid fusion at a cut (equal ranks, equal RRF scores)
    # may fall on either side of it from one query to the next, so two queries could see different pools
    with QdrantSink("kb", path=collections / engine, engine=engine) as sink:
        candidates = sink.search(vector, 100, sparse_vector=sparse, mode=mode, fetch_k=100)
        assert 12 <= len(candidates) < 100
        hits = sink.search(vector, 4, sparse_vector=sparse, mode=mode, fetch_k=100, reranker=reranker, query_text=QUERY)
    expected = reranker.rerank(QUERY, [c.payload["page_content"] for c in candidates], top_k=4)
    assert [h.id for h in hits] == [candidates[r.index].id for r in expected]
    assert [h.score for h in hits] == pytest.approx([r.score for r in expected], abs=1e-6)
    assert [h.retrieval_score for h in hits] == pytest.approx([candidates[r.index].score for r in expected])
    assert [h.payload for h in hits] == [candidates[r.index].payload for r in expected]
    # the reranker changed something: otherwise this test could not tell reranking from its absence
    assert [h.id for h in hits] != [c.id for c in candidates[:4]]


def test_reranking_keeps_filters_and_the_default_candidate_count(collections: Path, minilm, reranker) -> None:
    vector = minilm.embed_query(QUERY)
    with QdrantSink("kb", path=collections / "edge") as sink:
        doc = sink.search(vector, 1)[0].payload["doc_id"]
        only = sink.search(vector, 2, reranker=reranker, query_text=QUERY, metadata_filter={"doc_id": doc})
        assert only and {h.payload["doc_id"] for h in only} == {doc}
        default = sink.search(vector, 3, reranker=reranker, query_text=QUERY)  # fetch_k = max(4k, 20)
        candidates = sink.search(vector, 20)
    expected = reranker.rerank(QUERY, [c.payload["page_content"] for c in candidates], top_k=3)
    assert [h.id for h in default] == [candidates[r.index].id for r in expected]


def test_bad_reranked_searches_are_clear_errors(collections: Path, minilm, reranker, tmp_path: Path) -> None:
    vector = minilm.embed_query(QUERY)
    with QdrantSink("kb", path=collections / "edge") as sink:
        with pytest.raises(InputError, match="query_text"):
            sink.search(vector, 3, reranker=reranker)
        with pytest.raises(InputError, match="query_text"):
            sink.search(vector, 3, reranker=reranker, query_text="  ")
        with pytest.raises(InputError, match=r"fetch_k must be an int >= k \(5\)"):
            sink.search(vector, 5, reranker=reranker, query_text=QUERY, fetch_k=4)
        with pytest.raises(InputError, match="rerank"):
            sink.search(vector, 3, reranker="not a reranker", query_text=QUERY)
    with QdrantSink("other", path=tmp_path / "q") as sink:
        sink.prepare(vector.shape[0], {"model_id": "test"})
        assert sink.search(vector, 3, reranker=reranker, query_text=QUERY) == []  # nothing to rerank, no call
        sink.upsert([Point("00000000-0000-0000-0000-000000000001", vector.tolist(), {"title": "no text"})])
        with pytest.raises(StoreError, match="no 'page_content' text to rerank"):
            sink.search(vector, 1, reranker=reranker, query_text=QUERY)


def test_cli_search_rerank(collections: Path, tmp_path: Path, capsys) -> None:
    model = write_tiny_cross_encoder(tmp_path / "ce")
    store = tmp_path / "store"
    shutil.copytree(collections / "edge", store)
    args = ["search", QUERY, "--collection", "kb", "--qdrant-path", str(store), "--mode", "dense", "--json"]
    assert main([*args, "-k", "3", "--fetch-k", "10", "--rerank", str(model)]) == 0
    reranked = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main([*args, "-k", "10"]) == 0
    candidates = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = load_reranker(model).rerank(QUERY, [c["page_content"] for c in candidates], top_k=3)
    assert [r["id"] for r in reranked] == [candidates[e.index]["id"] for e in expected]
    assert [r["score"] for r in reranked] == pytest.approx([e.score for e in expected], abs=1e-5)
