"""`ingest(..., multivector=True)` with bge-m3's heads: one `embed_all` pass per batch stores each chunk's dense
vector, ColBERT multivector and (with the same model's M3SparseEncoder) lexical weights in one upsert, on Qdrant
Edge and qdrant-client's local mode; a rerun embeds nothing, another head is refused, a crash leaves nothing
half-written, and `embedkit ingest/search --colbert` rerank by MaxSim as the formula gives it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import embedkit
from embedkit.chunking import default_chunker
from embedkit.cli import main
from embedkit.errors import InputError, StoreError
from embedkit.ingestion import Document, ingest
from embedkit.ingestion.records import PROBE_TEXTS
from embedkit.models.bge_m3 import maxsim
from embedkit.sinks import QdrantSink
from embedkit.sparse.bge_m3 import M3SparseEncoder

from ..models.test_bge_m3 import write_tiny_bge_m3

TEXTS = [
    "Honeybees keep the hive warm in winter by shivering their flight muscles.",
    "Compost needs air, water and a mix of green and brown material. " * 6,
    "The violin has four strings tuned in fifths.",
    "Granite is an igneous rock of quartz and feldspar.",
    "Bees and wasps are insects; wasps do not make honey.",
]
# a markdown doc: its chunks carry a heading context, so what the model embeds is not their page_content
MARKDOWN = (
    "# Hives\n\n## Winter\n\n"
    + "Bees cluster and shiver to stay warm through the cold months. " * 12
    + "\n\n## Summer\n\n"
    + "They fan their wings at the entrance to cool the comb. " * 12
    + "\n"
)


def documents(markdown: bool = True) -> list[Document]:
    docs = [Document(f"d{i}", text) for i, text in enumerate(TEXTS)]
    return docs + ([Document("hives.md", MARKDOWN, strategy="markdown")] if markdown else [])


class Counted:
    """The real embedder, counting the texts each entry point embeds; `fail_after` embed_all calls, it fails."""

    def __init__(self, embedder) -> None:
        self._embedder = embedder
        self.texts = {"embed": 0, "embed_all": 0, "embed_lexical": 0}
        self.all_calls = 0
        self.fail_after: int | None = None

    def __getattr__(self, name: str):
        return getattr(self._embedder, name)

    def embed(self, texts, **kwargs):
        self.texts["embed"] += len(texts)
        return self._embedder.embed(texts, **kwargs)

    def embed_all(self, texts, **kwargs):
        self.all_calls += 1
        if self.fail_after is not None and self.all_calls > self.fail_after:
            raise RuntimeError("embedder failed mid-run")
        self.texts["embed_all"] += len(texts)
        return self._embedder.embed_all(texts, **kwargs)

    def embed_lexical(self, texts, **kwargs):
        self.texts["embed_lexical"] += len(texts)
        return self._embedder.embed_lexical(texts, **kwargs)


@pytest.fixture(scope="module")
def m3_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return write_tiny_bge_m3(tmp_path_factory.mktemp("m3"), minilm_dir, seed=5)


@pytest.fixture(scope="module")
def m3(m3_dir: Path):
    return embedkit.load(m3_dir, device="cpu", backend="torch")


@pytest.fixture(scope="module")
def other_head_dir(tmp_path_factory: pytest.TempPathFactory, m3_dir: Path) -> Path:
    """The same encoder and sparse head with another colbert_linear: same dense vectors, other multivectors."""
    target = tmp_path_factory.mktemp("m3-other-head") / "model"
    shutil.copytree(m3_dir, target)
    torch.manual_seed(99)
    torch.save(nn.Linear(32, 32).state_dict(), target / "colbert_linear.pt")
    return target


def stored(sink: QdrantSink) -> dict[str, tuple[dict, np.ndarray, object, np.ndarray | None]]:
    """point id -> (payload, dense, sparse vector, multivector rows)."""
    out = {}
    for point in sink.points():
        vectors = point.vector
        rows = vectors.get("colbert")
        out[point.id] = (point.payload, np.asarray(vectors[""]), vectors.get("sparse"), rows and np.asarray(rows))
    return out


def points_text(points: dict, key: tuple[str, int]) -> str:
    return next(p["page_content"] for p, *_ in points.values() if (p["doc_id"], p["chunk_index"]) == key)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, (payload, dense, sparse, rows) in a.items():
        assert b[key][0] == payload, key
        np.testing.assert_allclose(b[key][1], dense, atol=1e-6)
        assert (sparse is None) == (b[key][2] is None)
        if sparse is not None:
            assert sparse.indices == b[key][2].indices
            np.testing.assert_allclose(sparse.values, b[key][2].values, atol=1e-6)
        np.testing.assert_allclose(b[key][3], rows, atol=1e-6)


@pytest.mark.parametrize("engine", ["edge", "client-local"])
def test_one_pass_stores_dense_multivector_and_lexical_and_a_rerun_embeds_nothing(tmp_path: Path, m3, engine):
    counted = Counted(m3)
    sparse = M3SparseEncoder(counted)
    with QdrantSink("kb", path=tmp_path / "q", engine=engine) as sink:
        report = ingest(documents(), counted, sink, progress=False, sparse=sparse, multivector=True)
        points = stored(sink)
        assert report.embedded == 6 and len(points) == report.chunks
        assert sink.multivector_encoder()["head_digest"] == m3.heads.digest
        assert sink.info()["vectors"]["colbert"] == {"size": 32, "distance": "Dot", "multivector": "max_sim"}
        assert sink.info()["multivector_encoder"] == sink.multivector_encoder()  # `collections inspect` shows it
        chunker = default_chunker(m3, task="document")
        embedded = {
            (doc.id, chunk.index): chunk.embedding_text
            for doc in documents()
            for chunk in chunker.split(doc.text, strategy=doc.strategy)
        }
        assert len(embedded) == len(points)
        headed = [key for key, text in embedded.items() if text != points_text(points, key)]
        assert headed and len(headed) < len(points)
        # ONE pass for every chunk; the plain chunks' lexical weights came from it, only the chunks with a heading
        # context (embedded with it, stored without) were encoded again, from their page_content
        assert counted.texts == {"embed": len(PROBE_TEXTS), "embed_all": len(points), "embed_lexical": len(headed)}
        for payload, dense, sv, rows in points.values():
            text = payload["page_content"]
            alone = m3.embed_all([embedded[payload["doc_id"], payload["chunk_index"]]], task="document")
            np.testing.assert_allclose(dense, alone.dense[0], atol=1e-5)
            np.testing.assert_allclose(rows, alone.multivector[0], atol=1e-5)
            lexical = m3.embed_lexical([text])[0]  # what fill_sparse would compute from page_content
            assert sv.indices == sorted(lexical)
            np.testing.assert_allclose(sv.values, [lexical[i] for i in sv.indices], atol=1e-5)

        counted.texts = dict.fromkeys(counted.texts, 0)
        again = ingest(documents(), counted, sink, progress=False, sparse=sparse, multivector=True)
        assert (again.embedded, again.unchanged, again.chunks) == (0, 6, 0)
        assert counted.texts == {"embed": 0, "embed_all": 0, "embed_lexical": 0}
        assert_same(points, stored(sink))


def test_another_head_is_refused_unless_reembedded(tmp_path: Path, m3, other_head_dir: Path) -> None:
    other = embedkit.load(other_head_dir, device="cpu", backend="torch")
    assert other.weights_digest == m3.weights_digest and other.heads.digest != m3.heads.digest
    docs = documents(markdown=False)
    with QdrantSink("kb", path=tmp_path / "q") as sink:
        ingest(docs, m3, sink, progress=False, multivector=True)
        before = stored(sink)
        with pytest.raises(StoreError, match=r"holds multivectors of .*differs in head_digest.*reembed=True"):
            ingest(docs, other, sink, progress=False, multivector=True)
        assert_same(before, stored(sink))  # refused before any write
        report = ingest(docs, other, sink, progress=False, multivector=True, reembed=True)
        assert report.embedded == len(docs)  # the head is in every content hash: all written again
        assert sink.multivector_encoder()["head_digest"] == other.heads.digest
        for payload, _, _, rows in stored(sink).values():
            np.testing.assert_allclose(rows, other.embed_multivector([payload["page_content"]])[0], atol=1e-5)


def test_collections_and_embedders_that_cannot_take_multivectors(tmp_path: Path, m3, minilm) -> None:
    docs = documents(markdown=False)
    with QdrantSink("kb", path=tmp_path / "minilm") as sink:
        with pytest.raises(InputError, match="needs an embedder with a ColBERT head"):
            ingest(docs, minilm, sink, progress=False, multivector=True)
        assert not sink.exists()
    with QdrantSink("kb", path=tmp_path / "dense") as sink:
        ingest(docs, m3, sink, progress=False)
        with pytest.raises(StoreError, match=r"created without a multivector 'colbert'.*new collection"):
            ingest(docs, m3, sink, progress=False, multivector=True)
    with QdrantSink("kb", path=tmp_path / "colbert") as sink:
        ingest(docs, m3, sink, progress=False, multivector=True)
        with pytest.raises(StoreError, match=r"stores ColBERT multivectors .*--colbert"):
            ingest(docs, m3, sink, progress=False, reembed=True)


def test_a_crash_mid_run_leaves_nothing_half_written(tmp_path: Path, m3) -> None:
    docs = documents()
    with QdrantSink("kb", path=tmp_path / "clean") as clean:
        ingest(docs, m3, clean, progress=False, sparse=M3SparseEncoder(m3), multivector=True, batch_tokens=10)
        expected = stored(clean)
    counted = Counted(m3)
    counted.fail_after = 3  # batch_tokens=10: one doc per pass
    with QdrantSink("kb", path=tmp_path / "q") as sink:
        with pytest.raises(RuntimeError, match="embedder failed mid-run"):
            ingest(docs, counted, sink, progress=False, sparse=M3SparseEncoder(m3), multivector=True, batch_tokens=10)
        partial = stored(sink)
        done = {p["doc_id"] for p, *_ in partial.values() if p.get("content_hash")}
        assert 0 < len(done) < len(docs)
        # every point written holds all three vectors: they went in one upsert
        assert all(sv is not None and rows is not None for _, _, sv, rows in partial.values())
        counted.fail_after = None
        rerun = ingest(docs, counted, sink, progress=False, sparse=M3SparseEncoder(m3), multivector=True,
                       batch_tokens=10)  # fmt: skip
        assert rerun.unchanged == len(done) and rerun.embedded == len(docs) - len(done)
        assert_same(expected, stored(sink))


def test_cli_colbert_ingest_and_maxsim_rerank(tmp_path: Path, m3_dir: Path, m3, capsys) -> None:
    corpus = tmp_path / "docs"
    corpus.mkdir()
    for i, text in enumerate(TEXTS):
        (corpus / f"d{i}.txt").write_text(text)
    store = str(tmp_path / "q")
    base = ["--collection", "kb", "--qdrant-path", store]
    assert main(["ingest", str(corpus), "--quiet", "--model", str(m3_dir), "--colbert", *base]) == 0
    capsys.readouterr()
    query = "why do bees shiver in winter"
    assert main(["search", query, "--json", "-k", "3", "--colbert", *base]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # fetch_k (max(4k, 20)) holds every chunk, so the MaxSim stage orders them all by the formula
    rows = m3.embed_multivector([query], task=m3.query_task)[0]
    with QdrantSink("kb", path=store) as sink:
        scores = sorted(
            ((maxsim(rows, np.asarray(p.vector["colbert"])), p.payload["doc_id"]) for p in sink.points()), reverse=True
        )
    assert [hit["doc_id"] for hit in hits] == [doc for _, doc in scores[:3]]
    np.testing.assert_allclose([hit["score"] for hit in hits], [score for score, _ in scores[:3]], rtol=1e-5)

    assert main(["search", query, "--colbert", "--rerank", str(m3_dir), *base]) == 1
    assert "give one" in capsys.readouterr().err
    assert main(["ingest", str(corpus), "--quiet", "--model", str(m3_dir), "--collection", "plain",
                 "--qdrant-path", store]) == 0  # fmt: skip
    assert main(["search", query, "--colbert", "--collection", "plain", "--qdrant-path", store]) == 1
    assert "records no ColBERT multivectors" in capsys.readouterr().err
