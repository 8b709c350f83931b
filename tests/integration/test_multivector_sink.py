"""bge-m3's ColBERT vectors as a Qdrant multivector (MaxSim): stored beside the dense and sparse vectors of
each point, read back as written, and used by `search(multivector=...)` to rerank the dense / sparse / hybrid
candidates, on Qdrant Edge and on qdrant-client's local mode, with scores equal to the formula."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import embedkit
from embedkit.errors import InputError, StoreError
from embedkit.models.bge_m3 import colbert_score, maxsim
from embedkit.sinks import Point, QdrantSink
from embedkit.sinks.base import SparseConfig
from embedkit.sparse.bge_m3 import M3SparseEncoder

from ..models.test_bge_m3 import write_tiny_bge_m3

DOCS = [
    "Honeybees keep the hive warm in winter by shivering their flight muscles.",
    "Compost needs air, water and a mix of green and brown material.",
    "The violin has four strings tuned in fifths.",
    "Granite is an igneous rock of quartz and feldspar.",
    "Bees and wasps are insects; wasps do not make honey.",
    "x",
]
IDS = [f"00000000-0000-0000-0000-00000000000{i}" for i in range(len(DOCS))]
QUERY = "why do bees shiver in winter"


@pytest.fixture(scope="module")
def m3(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path):
    return embedkit.load(write_tiny_bge_m3(tmp_path_factory.mktemp("m3"), minilm_dir, seed=3), device="cpu")


@pytest.fixture(scope="module")
def encoded(m3):
    return m3.embed_all(DOCS)


def fill(sink: QdrantSink, m3, encoded) -> None:
    sparse = M3SparseEncoder(m3)
    sink.prepare(m3.dimension, {"model": "tiny-m3"}, sparse=SparseConfig(), multivector=32)
    points = [
        Point(pid, vector, {"page_content": text, "i": i}, sparse=sv, multivector=mv)
        for i, (pid, text, vector, sv, mv) in enumerate(
            zip(IDS, DOCS, encoded.dense, sparse.embed_documents(DOCS), encoded.multivector, strict=True)
        )
    ]
    sink.upsert(points)


@pytest.mark.parametrize("engine", ["edge", "client-local"])
def test_multivectors_round_trip_and_rerank_by_maxsim(tmp_path: Path, m3, encoded, engine: str) -> None:
    with QdrantSink("kb", path=tmp_path / "q", engine=engine) as sink:
        fill(sink, m3, encoded)
        assert sink.vectors()["colbert"].multivector and not sink.vectors()[""].multivector
        assert sink.info()["vectors"]["colbert"] == {"size": 32, "distance": "Dot", "multivector": "max_sim"}
        stored = {point.id: point.vector for point in sink.points()}
        for pid, written in zip(IDS, encoded.multivector, strict=True):
            np.testing.assert_allclose(np.asarray(stored[pid]["colbert"]), written, atol=1e-7)
        everything = m3.embed_all([QUERY])
        query_dense, query_rows = everything.dense[0], everything.multivector[0]
        sparse_query = M3SparseEncoder(m3).embed_query(QUERY)
        for search in (
            {"vector": query_dense},
            {"vector": None, "sparse_vector": sparse_query, "mode": "sparse"},
            {"vector": query_dense, "sparse_vector": sparse_query},
        ):
            vector = search.pop("vector")
            candidates = sink.search(vector, len(DOCS), fetch_k=len(DOCS), **search)
            hits = sink.search(vector, 3, multivector=query_rows, fetch_k=len(DOCS), **search)
            # every candidate is reranked: the 3 best of them by MaxSim, Qdrant's sum of max dot products
            expected = sorted(
                ((maxsim(query_rows, encoded.multivector[hit.payload["i"]]), hit.id) for hit in candidates),
                reverse=True,
            )[:3]
            assert [hit.id for hit in hits] == [pid for _, pid in expected], search
            for hit in hits:
                document = encoded.multivector[hit.payload["i"]]
                assert abs(hit.score - maxsim(query_rows, document)) < 1e-5
                # FlagEmbedding's colbert_score is the mean over the query's vectors: Qdrant's sum / m
                assert abs(hit.score / len(query_rows) - colbert_score(query_rows, document)) < 1e-6
        # a small fetch_k: only the first stage's candidates are reranked
        first = [hit.id for hit in sink.search(query_dense, 2)]
        assert {hit.id for hit in sink.search(query_dense, 2, fetch_k=2, multivector=query_rows)} == set(first)
        # a point stored without a multivector is found by the vector search, never by the reranked one
        lone = "00000000-0000-0000-0000-0000000000ff"
        sink.upsert([Point(lone, query_dense, {"page_content": QUERY, "i": -1})])
        assert sink.search(query_dense, 1)[0].id == lone
        reranked = sink.search(query_dense, len(DOCS) + 1, fetch_k=len(DOCS) + 1, multivector=query_rows)
        assert len(reranked) == len(DOCS) and lone not in {hit.id for hit in reranked}


@pytest.mark.parametrize("engine", ["edge", "client-local"])
def test_a_multivector_search_is_checked_against_the_collection(tmp_path: Path, m3, encoded, engine: str) -> None:
    rows = encoded.multivector[0]
    with QdrantSink("plain", path=tmp_path / "q", engine=engine) as plain:
        plain.prepare(m3.dimension, {"model": "tiny-m3"})
        plain.upsert([Point(IDS[0], encoded.dense[0], {"page_content": DOCS[0]})])
        with pytest.raises(StoreError, match="has no multivector 'colbert'"):
            plain.search(encoded.dense[0], 1, multivector=rows)
    with QdrantSink("kb", path=tmp_path / "q", engine=engine) as sink:
        fill(sink, m3, encoded)
        with pytest.raises(StoreError, match="32-d multivector rows"):
            sink.search(encoded.dense[0], 1, multivector=rows[:, :8])
        with pytest.raises(InputError, match=r"\[m, D\] matrix"):
            sink.search(encoded.dense[0], 1, multivector=rows[0])
        with pytest.raises(InputError, match="not both"):
            sink.search(encoded.dense[0], 1, multivector=rows, reranker=object(), query_text="q")
        with pytest.raises(StoreError, match="32-d multivector rows"):
            sink.prepare(m3.dimension, {"model": "tiny-m3"}, multivector=16)
