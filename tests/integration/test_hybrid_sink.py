"""Hybrid collections on both Qdrant engines (Qdrant Edge, qdrant-client's local mode): named dense and sparse
vectors, dense / sparse / hybrid searches through Qdrant's Query API, a sparse vector added to a collection that
had none (its points filled in, their dense vectors kept), a copy with `push`, and the errors a user meets."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from embedkit.errors import InputError, StoreError
from embedkit.sinks import Point, QdrantSink
from embedkit.sinks.base import SparseConfig
from embedkit.sinks.collections import push
from embedkit.sparse import SparseVector

ENGINES = pytest.mark.parametrize("engine", ["edge", "client-local"])
# four points in 2-d with hand-made term weights: dense and sparse rankings disagree on purpose
TEXTS = {
    "apple": ([1.0, 0.0], SparseVector([1], [1.0]), "red"),
    "pear": ([0.9, 0.1], SparseVector([2], [1.0]), "green"),
    "plum": ([0.0, 1.0], SparseVector([1, 3], [1.0, 2.0]), "red"),
    "fig": ([0.7, 0.7], SparseVector([], []), "green"),  # no terms (a text of stopwords): stored, never matched
}


def pid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def names(hits) -> list[str]:
    return [hit.payload["page_content"] for hit in hits]


def points(sparse: bool = True) -> list[Point]:
    return [
        Point(
            pid(name),
            dense,
            {"page_content": name, "doc_id": name, "metadata": {"color": color}},
            terms if sparse else None,
        )
        for name, (dense, terms, color) in TEXTS.items()
    ]


@pytest.fixture(params=["edge", "client-local"])
def hybrid(request: pytest.FixtureRequest, tmp_path: Path):
    with QdrantSink("kb", path=tmp_path / "q", engine=request.param) as sink:
        sink.prepare(2, {"model_id": "test"}, sparse=SparseConfig("idf"))
        sink.upsert(points())
        yield sink


def test_each_mode_ranks_by_its_own_vectors(hybrid: QdrantSink) -> None:
    assert hybrid.sparse_vectors() == {"sparse": SparseConfig("idf")}
    assert names(hybrid.search([1.0, 0.0], 4)) == ["apple", "pear", "fig", "plum"]  # dense, as before
    assert names(hybrid.search([1.0, 0.0], 4, mode="dense", sparse_vector=SparseVector([3], [1.0]))) == [
        "apple",
        "pear",
        "fig",
        "plum",
    ]
    sparse = hybrid.search(None, 4, sparse_vector=SparseVector([3], [1.0]))
    assert names(sparse) == ["plum"]  # only points sharing a term match
    # idf: term 1 is in two of four points, term 3 in one: plum (term 3 weight 2) before apple
    assert names(hybrid.search(None, 4, sparse_vector=SparseVector([1, 3], [1.0, 1.0]))) == ["plum", "apple"]
    fused = hybrid.search([1.0, 0.0], 4, sparse_vector=SparseVector([3], [1.0]), mode="hybrid")
    # reciprocal rank fusion as Qdrant computes it: the sum over branches of 1 / (rrf_k + rank), ranks from 0;
    # plum is first of the sparse branch and last of the dense one, apple first of the dense one only
    assert names(fused) == ["plum", "apple", "pear", "fig"]
    assert [hit.score for hit in fused[:2]] == pytest.approx([1 / 60 + 1 / 63, 1 / 60], rel=1e-5)
    weighted = hybrid.search(
        [1.0, 0.0], 2, sparse_vector=SparseVector([3], [1.0]), mode="hybrid", weights=(1.0, 3.0), rrf_k=2
    )
    assert names(weighted)[0] == "plum"
    dbsf = hybrid.search([1.0, 0.0], 4, sparse_vector=SparseVector([3], [1.0]), mode="hybrid", fusion="dbsf")
    assert set(names(dbsf)[:2]) == {"apple", "plum"}


def test_filters_apply_to_every_branch_and_the_threshold_to_fused_scores(hybrid: QdrantSink) -> None:
    green = {"color": "green"}
    query = {"sparse_vector": SparseVector([1, 3], [1.0, 1.0]), "metadata_filter": green}
    assert names(hybrid.search([1.0, 0.0], 4, mode="hybrid", **query)) == ["pear", "fig"]
    assert names(hybrid.search(None, 4, **query)) == []  # no green point holds terms 1 or 3
    everything = hybrid.search([1.0, 0.0], 4, sparse_vector=SparseVector([1], [1.0]))
    kept = hybrid.search([1.0, 0.0], 4, sparse_vector=SparseVector([1], [1.0]), score_threshold=everything[1].score)
    assert names(kept) == names(everything)[:2]


def test_bad_searches_are_named(hybrid: QdrantSink, tmp_path: Path) -> None:
    terms = SparseVector([1], [1.0])
    cases = [
        (dict(vector=None), "needs the dense query vector, a sparse_vector, or both"),
        (dict(vector=None, mode="hybrid", sparse_vector=terms), "a hybrid search needs the dense query vector"),
        (dict(vector=[1.0, 0.0], mode="sparse"), "needs the sparse query vector"),
        (dict(vector=[1.0, 0.0], mode="both", sparse_vector=terms), "mode must be one of dense, sparse, hybrid"),
        (dict(vector=[1.0, 0.0], sparse_vector=terms, fusion="max"), "fusion must be one of rrf, dbsf"),
        (dict(vector=[1.0, 0.0], sparse_vector=terms, fusion="dbsf", weights=(1, 2)), "weights go with fusion='rrf'"),
        (dict(vector=[1.0, 0.0], sparse_vector=terms, weights=(1,)), r"weights must be \(dense, sparse\)"),
        (dict(vector=[1.0, 0.0], sparse_vector=terms, fetch_k=2), r"fetch_k must be an int >= k \(3\)"),
        (dict(vector=[1.0, 0.0], sparse_vector={1: 1.0}), "must be an embedkit.sparse.SparseVector"),
    ]
    for arguments, message in cases:
        vector = arguments.pop("vector")
        with pytest.raises(InputError, match=message):
            hybrid.search(vector, 3, **arguments)
    dense_only = QdrantSink("dense", location=":memory:")
    dense_only.prepare(2, {"model_id": "test"})
    with pytest.raises(StoreError, match=r"has no sparse vector 'sparse' \(sparse vectors: none\).*--sparse bm25"):
        dense_only.search([1.0, 0.0], 3, sparse_vector=terms)


@ENGINES
def test_a_dense_collection_gains_sparse_vectors_keeping_its_dense_ones(tmp_path: Path, engine: str) -> None:
    with QdrantSink("kb", path=tmp_path / "q", engine=engine, index_fields={"color": "keyword"}) as sink:
        sink.prepare(2, {"model_id": "test"})
        sink.upsert(points(sparse=False))
        before = {p.id: p for p in sink.points()}
        indexes = sink.payload_indexes()
        assert sink.add_sparse_vector(SparseConfig("idf")) and not sink.add_sparse_vector(SparseConfig("idf"))
        with pytest.raises(StoreError, match="with modifier 'idf'; this encoder needs None"):
            sink.add_sparse_vector(SparseConfig(None))
        assert sink.sparse_vectors() == {"sparse": SparseConfig("idf")} and sink.payload_indexes() == indexes
        by_text = {name: terms for name, (_, terms, _) in TEXTS.items()}
        seen: list[str] = []

        def encode(texts: list[str]) -> list[SparseVector]:
            seen.extend(texts)
            return [by_text[text] for text in texts]

        assert sink.fill_sparse(encode, page_size=3) == 4 and sorted(seen) == sorted(TEXTS)
        assert sink.fill_sparse(encode) == 0  # nothing missing: nothing recomputed
        after = {p.id: p for p in sink.points()}
        for key, point in before.items():
            assert after[key].payload == point.payload
            np.testing.assert_allclose(after[key].vector[""], point.vector, atol=1e-6)
            assert after[key].vector["sparse"] == TEXTS[point.payload["page_content"]][1]
        assert names(sink.search(None, 4, sparse_vector=SparseVector([3], [1.0]))) == ["plum"]
        sink.clear_sparse()
        assert names(sink.search(None, 4, sparse_vector=SparseVector([3], [1.0]))) == []
        assert sink.fill_sparse(encode) == 4
    with QdrantSink("kb", path=tmp_path / "q", engine=engine) as again:  # what was added is there on reopening
        assert again.sparse_vectors() == {"sparse": SparseConfig("idf")}
        assert names(again.search(None, 4, sparse_vector=SparseVector([3], [1.0]))) == ["plum"]


def test_an_edge_swap_stopped_between_its_renames_is_undone_on_opening(tmp_path: Path) -> None:
    with QdrantSink("kb", path=tmp_path / "q") as sink:
        sink.prepare(2, {"model_id": "test"})
        sink.upsert(points(sparse=False))
    shard = tmp_path / "q" / "kb" / "shard"
    shard.rename(shard.with_name("shard.prev"))  # as a run killed after the first rename leaves it
    with QdrantSink("kb", path=tmp_path / "q") as sink:
        assert sink.count() == 4 and sink.sparse_vectors() == {}
        assert not shard.with_name("shard.prev").exists()


@ENGINES
def test_push_copies_sparse_vectors(hybrid: QdrantSink, tmp_path: Path, engine: str) -> None:
    with QdrantSink("copy", path=tmp_path / "copy", engine=engine) as target:
        push(hybrid, target)
        assert target.sparse_vectors() == hybrid.sparse_vectors()
        query = {"sparse_vector": SparseVector([1, 3], [1.0, 1.0])}
        assert names(target.search([1.0, 0.0], 4, **query)) == names(hybrid.search([1.0, 0.0], 4, **query))
