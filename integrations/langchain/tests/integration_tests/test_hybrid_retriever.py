"""EmbedkitRetriever on a hybrid collection: hybrid by default, the same hits as the sink's own fused search,
and dense / sparse modes on request."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedkit import StoreError
from embedkit.ingestion import ingest, load_directory
from embedkit.sinks import QdrantSink
from embedkit.sparse import BM25Encoder
from langchain_embedkit import EmbedkitEmbeddings, EmbedkitRetriever

from .conftest import EXAMPLE_DOCS

QUERIES = ["how do I reset my password", "why do bees shiver", "compost heap temperature"]


@pytest.fixture(scope="module")
def hybrid_store(tmp_path_factory: pytest.TempPathFactory, local_embedder) -> Path:
    path = tmp_path_factory.mktemp("hybrid") / "q"
    with QdrantSink("kb", path=path) as sink:
        ingest(load_directory(EXAMPLE_DOCS, source="docs"), local_embedder, sink, progress=False, sparse=BM25Encoder())
        dense_only = QdrantSink("dense", path=path)
        ingest(load_directory(EXAMPLE_DOCS, source="docs"), local_embedder, dense_only, progress=False)
    return path


def test_hybrid_by_default_with_the_sinks_ranking(hybrid_store: Path, local_embedder) -> None:
    embeddings = EmbedkitEmbeddings(embedder=local_embedder)
    bm25 = BM25Encoder()
    with EmbedkitRetriever(collection="kb", path=str(hybrid_store), embeddings=embeddings, k=4) as retriever:
        assert retriever.mode == "hybrid"
        sink = QdrantSink("kb", path=hybrid_store)
        for query in QUERIES:
            expected = sink.search(local_embedder.embed_query(query), 4, sparse_vector=bm25.embed_query(query))
            found = retriever.invoke(query)
            # fused RRF scores tie often (1/(k+rank) sums), and Qdrant orders tied points arbitrarily: compare
            # the hits and their scores, not the order among ties
            assert {doc.id for doc in found} == {hit.id for hit in expected}, query
            assert sorted(d.metadata["embedkit"]["score"] for d in found) == pytest.approx(
                sorted(hit.score for hit in expected)
            )
        sparse_only = EmbedkitRetriever(collection="kb", path=str(hybrid_store), embeddings=embeddings, mode="sparse")
        query = QUERIES[1]
        assert [doc.id for doc in sparse_only.invoke(query)] == [
            hit.id for hit in sink.search(None, 4, sparse_vector=bm25.embed_query(query))
        ]


def test_a_dense_collection_is_searched_densely_and_hybrid_is_a_clear_error(hybrid_store: Path, local_embedder):
    embeddings = EmbedkitEmbeddings(embedder=local_embedder)
    with EmbedkitRetriever(collection="dense", path=str(hybrid_store), embeddings=embeddings) as retriever:
        assert retriever.mode == "dense" and retriever.invoke("bees")
    with pytest.raises(StoreError, match="records no sparse encoder"):
        EmbedkitRetriever(collection="dense", path=str(hybrid_store), embeddings=embeddings, mode="hybrid")
