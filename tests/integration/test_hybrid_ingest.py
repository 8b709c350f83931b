"""Ingest with sparse vectors (BM25) beside the dense ones: every chunk gets both, a rerun changes nothing, a
dense collection gains sparse vectors without re-embedding, another sparse encoder is refused unless
re-encoded, and `embedkit search --mode` / EmbedkitRetriever read the result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from embedkit.cli import main
from embedkit.errors import StoreError
from embedkit.ingestion import Document, ingest, load_directory
from embedkit.sinks import QdrantSink
from embedkit.sparse import BM25Encoder


def stored(sink: QdrantSink) -> dict[str, tuple[dict, list[float], object]]:
    out = {}
    for point in sink.points():
        vectors = point.vector if isinstance(point.vector, dict) else {"": point.vector}
        out[point.id] = (point.payload, vectors[""], vectors.get("sparse"))
    return out


@pytest.fixture()
def corpus(tmp_path: Path, example_docs: Path) -> Path:
    target = tmp_path / "docs"
    shutil.copytree(example_docs, target)
    return target


@pytest.mark.parametrize("engine", ["edge", "client-local"])
def test_every_chunk_gets_both_vectors_and_a_rerun_changes_nothing(tmp_path: Path, corpus: Path, minilm, engine):
    bm25 = BM25Encoder()
    with QdrantSink("kb", path=tmp_path / "q", engine=engine) as sink:
        first = ingest(load_directory(corpus, source="docs"), minilm, sink, progress=False, sparse=bm25)
        assert first.embedded == 20 and first.sparse_filled == 0
        points = stored(sink)
        assert len(points) == first.chunks
        for payload, _, sparse in points.values():
            assert sparse == bm25.embed_documents([payload["page_content"]])[0]
        assert sink.sparse_encoder() == bm25.fingerprint()
        again = ingest(load_directory(corpus, source="docs"), minilm, sink, progress=False, sparse=bm25)
        assert (again.embedded, again.chunks, again.sparse_filled) == (0, 0, 0) and stored(sink) == points
        # a keyword only one document has: the sparse branch finds it, and hybrid keeps it first
        query = "composting"
        sparse_hits = sink.search(None, 3, sparse_vector=bm25.embed_query(query))
        assert sparse_hits[0].payload["doc_id"] == "docs/composting.md"
        hybrid = sink.search(minilm.embed_query(query), 3, sparse_vector=bm25.embed_query(query))
        assert hybrid[0].payload["doc_id"] == "docs/composting.md"


def test_a_dense_collection_gains_sparse_vectors_as_a_clean_hybrid_run_has_them(tmp_path: Path, corpus: Path, minilm):
    docs = list(load_directory(corpus, source="docs"))
    with QdrantSink("kb", path=tmp_path / "clean") as clean:
        ingest(docs, minilm, clean, progress=False, sparse=BM25Encoder())
        expected = stored(clean)
    with QdrantSink("kb", path=tmp_path / "grown") as grown:
        ingest(docs, minilm, grown, progress=False)
        dense_before = {key: vector for key, (_, vector, _) in stored(grown).items()}
        report = ingest(docs, minilm, grown, progress=False, sparse=BM25Encoder())
        assert report.embedded == 0 and report.sparse_filled == len(expected)  # no doc re-embedded
        got = stored(grown)
    assert got.keys() == expected.keys()
    for key, (payload, dense, sparse) in expected.items():
        assert got[key][0] == payload and got[key][2] == sparse, key
        np.testing.assert_array_equal(got[key][1], dense_before[key])  # the very dense vectors it had
        np.testing.assert_allclose(got[key][1], dense, atol=1e-6)


def test_another_sparse_encoder_is_refused_unless_re_encoded(tmp_path: Path, minilm) -> None:
    docs = [Document("a", "Bees keep warm by shivering."), Document("b", "Compost needs air and water.")]
    with QdrantSink("kb", path=tmp_path / "q") as sink:
        ingest(docs, minilm, sink, progress=False, sparse=BM25Encoder())
        before = stored(sink)
        other = BM25Encoder(k=1.5)
        with pytest.raises(StoreError, match=r"holds sparse vectors of .*'k': 1.2.* reembed=True"):
            ingest(docs, minilm, sink, progress=False, sparse=other)
        assert stored(sink) == before
        report = ingest(docs, minilm, sink, progress=False, sparse=other, reembed=True)
        assert report.embedded == 0 and report.sparse_filled == 2
        after = stored(sink)
        for key, (payload, dense, sparse) in after.items():
            assert sparse == other.embed_documents([payload["page_content"]])[0] != before[key][2]
            assert dense == before[key][1]
        assert sink.sparse_encoder() == other.fingerprint()


def test_text_with_no_terms_left_is_stored_with_an_empty_sparse_vector(tmp_path: Path, minilm) -> None:
    with QdrantSink("kb", path=tmp_path / "q") as sink:
        ingest([Document("empty", "The and of it, was!"), Document("b", "Bees")], minilm, sink, progress=False,
               sparse=BM25Encoder())  # fmt: skip
        sparse = {payload["doc_id"]: vector for payload, _, vector in stored(sink).values()}
        assert sparse["empty"].indices == [] and sparse["b"].indices
        # searchable densely and in hybrid mode; the sparse branch never matches it
        hits = sink.search(minilm.embed_query("the and of it"), 2, sparse_vector=BM25Encoder().embed_query("the of"))
        assert {hit.payload["doc_id"] for hit in hits} == {"empty", "b"}
        assert sink.search(None, 2, sparse_vector=BM25Encoder().embed_query("bees"))[0].payload["doc_id"] == "b"


def test_cli_sparse_ingest_and_search_modes(tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]):
    store = str(tmp_path / "q")
    base = ["--collection", "kb", "--qdrant-path", store]
    assert main(["ingest", str(corpus), "--quiet", *base]) == 0
    assert main(["ingest", str(corpus), "--quiet", "--sparse", "bm25", *base]) == 0
    assert "stored points given their sparse vector" in capsys.readouterr().out

    def top(*extra: str) -> list[str]:
        assert main(["search", "shivering bees in winter", "--json", "-k", "3", *base, *extra]) == 0
        return [json.loads(line)["doc_id"] for line in capsys.readouterr().out.splitlines()]

    hybrid, dense, sparse = top(), top("--mode", "dense"), top("--mode", "sparse")
    assert hybrid == top("--mode", "hybrid", "--fetch-k", "40") and len(hybrid) == 3
    assert dense[0].endswith("docs/honeybees.md") and any(d.endswith("docs/honeybees.md") for d in hybrid[:2])
    assert top("--mode", "hybrid", "--fusion", "dbsf")
    assert dense and sparse
    assert main(["search", "bees", "--mode", "hybrid", "--collection", "kb", "--qdrant-path", store,
                 "--vector-names", "llamaindex"]) == 1  # fmt: skip
    assert "has no sparse vector 'text-sparse-new'" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["edge", "client-local"])
def test_bge_m3_lexical_weights_are_the_sparse_side(tmp_path: Path, minilm_dir: Path, engine: str) -> None:
    """bge-m3's sparse head through load_sparse: ingest stores its vectors unchanged, a collection rebuilds the
    encoder from its record, and a word only one document has is found by the sparse and hybrid searches."""
    from embedkit import load
    from embedkit.sparse import encoder_for_collection, load_sparse

    from ..models.test_bge_m3 import write_tiny_bge_m3

    model_dir = write_tiny_bge_m3(tmp_path / "m3", minilm_dir, seed=11, sparse_bias=2.0)
    dense, sparse = load(model_dir, device="cpu"), load_sparse(model_dir, device="cpu")
    docs = [Document("bees", "Honeybees shiver in winter."), Document("violin", "A violin has four strings."),
            Document("rock", "Granite is an igneous rock.")]  # fmt: skip
    with QdrantSink("kb", path=tmp_path / "q", engine=engine) as sink:
        ingest(docs, dense, sink, progress=False, sparse=sparse)
        for payload, _, vector in stored(sink).values():
            alone = sparse.embed_documents([payload["page_content"]])[0]  # ingest batched it with others
            assert vector.indices == alone.indices and np.allclose(vector.values, alone.values, atol=1e-6)
        assert sink.sparse_encoder() == sparse.fingerprint() == encoder_for_collection(sink).fingerprint()
        query = sparse.embed_query("violin")
        assert query.indices  # the word's tokens weigh something
        assert sink.search(None, 3, sparse_vector=query)[0].payload["doc_id"] == "violin"
        assert len(sink.search(None, 3, sparse_vector=query)) == 1  # no other document has its tokens
        hybrid = sink.search(dense.embed_query("violin"), 3, sparse_vector=query)
        assert "violin" in [hit.payload["doc_id"] for hit in hybrid]
