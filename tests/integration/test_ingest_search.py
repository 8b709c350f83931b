"""Ingest the example docs into qdrant-client's real local store, search them, re-run, change, break."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedkit.errors import InputError, StoreError
from embedkit.ingestion import Document, ingest, load_directory, point_id
from embedkit.sinks import Point
from embedkit.sinks.qdrant import QdrantSink

QUERIES = {
    "how do I reset my password": "password-reset.md",
    "what temperature should the water be for pour over coffee": "coffee-brewing.md",
    "how do plants turn sunlight into sugar": "photosynthesis.md",
    "what happens at the event horizon": "black-holes.md",
    "how should I prepare for my first 42 km race": "marathon-training.md",
    "my tyre keeps going flat, how do I fix it": "bicycle-maintenance.md",
    "SYN ACK connection setup": "tcp-handshake.md",
    "creating an isolated environment for python packages": "python-virtualenv.md",
}


@pytest.fixture
def sink(tmp_path: Path) -> QdrantSink:
    store = QdrantSink("kb", path=tmp_path / "qdrant")
    yield store
    store.close()


def test_search_finds_the_obvious_document_first(minilm, sink: QdrantSink, example_docs: Path) -> None:
    report = ingest(load_directory(example_docs, source="docs"), minilm, sink, progress=False)
    assert report.docs == report.embedded == 20 and not report.skipped
    assert report.chunks == sink.count() > 20
    for query, expected in QUERIES.items():
        hits = sink.search(minilm.embed_query(query), k=3)
        assert hits[0].payload["doc_id"] == f"docs/{expected}", (query, [h.payload["doc_id"] for h in hits])


def test_rerun_embeds_nothing_and_keeps_the_count(minilm, sink: QdrantSink, example_docs: Path) -> None:
    first = ingest(load_directory(example_docs, source="docs"), minilm, sink, progress=False)
    points = sink.count()
    second = ingest(load_directory(example_docs, source="docs"), minilm, sink, progress=False)
    assert second.embedded == 0 and second.unchanged == 20 and second.chunks == 0
    assert sink.count() == points == first.chunks


def test_payload_and_ids_are_deterministic(minilm, sink: QdrantSink, example_docs: Path) -> None:
    ingest(load_directory(example_docs, source="docs"), minilm, sink, progress=False)
    source = (example_docs / "honeybees.md").read_text()
    payload = next(p.payload for p in sink.points() if p.id == point_id("docs/honeybees.md", 0))
    assert payload["doc_id"] == "docs/honeybees.md" and payload["chunk_index"] == 0
    assert payload["source"] == "docs"
    assert source[payload["start"] : payload["end"]] == payload["page_content"]
    assert payload["metadata"] == {"source": "docs/honeybees.md"} and len(payload["content_hash"]) == 64


def test_changed_document_replaces_its_chunks_and_deletes_surplus(minilm, sink: QdrantSink) -> None:
    long_text = "\n\n".join(f"Paragraph {i}. " + "Bees gather nectar from flowers all summer. " * 12 for i in range(8))
    ingest([Document("doc", long_text), Document("other", "Unrelated text.")], minilm, sink, progress=False)
    before = sink.count()
    assert before > 3
    report = ingest(
        [Document("doc", "Now it is short."), Document("other", "Unrelated text.")], minilm, sink, progress=False
    )
    assert report.embedded == 1 and report.unchanged == 1 and report.deleted == before - 2
    assert sink.count() == 2
    hit = sink.search(minilm.embed_query("short"), k=1)[0]
    assert hit.payload["page_content"] == "Now it is short." and hit.payload["chunk_count"] == 1


def test_interrupted_write_is_repaired_on_rerun(minilm, sink: QdrantSink) -> None:
    docs = [Document("a", "Alpha text about rivers."), Document("b", "Beta text about mountains.")]
    ingest(docs, minilm, sink, progress=False)
    # simulate a crash between the upsert and the final hash write: the hash is missing
    stored = next(iter(sink.points()))
    assert stored.id == point_id("a", 0) or stored.id == point_id("b", 0)
    unhashed = {key: value for key, value in stored.payload.items() if key != "content_hash"}
    sink.upsert([Point(stored.id, stored.vector, unhashed)])
    report = ingest(docs, minilm, sink, progress=False)
    assert report.embedded == 1 and report.unchanged == 1 and sink.count() == 2


def test_other_embedder_is_refused_without_reembed(minilm, tiny_bert_dir: Path, tmp_path: Path) -> None:
    import embedkit

    sink = QdrantSink("kb", location=":memory:")
    ingest(["some text"], minilm, sink, progress=False)
    with pytest.raises(StoreError, match=r"holds 384-d vectors.*gives 32-d vectors"):
        ingest(["some text"], embedkit.load(tiny_bert_dir), sink, progress=False)
    with pytest.raises(StoreError, match=r"was written by embedder .*normalize=True.*normalize=False.*reembed=True"):
        ingest(["some text"], minilm, sink, normalize=False, progress=False)
    report = ingest(["some text"], minilm, sink, normalize=False, reembed=True, progress=False)
    assert report.embedded == 1 and sink.recorded_fingerprint()["normalize"] is False


def test_collections_accept_the_weights_that_reproduce_their_probes(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """Compatibility is decided by what the vectors are, not by a name: the same weights on another
    backend may write; other weights saved under the same path (the same model id) may not."""
    import shutil

    import embedkit
    from tests.conftest import write_tiny_bert

    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    docs = [Document("a", "Tides follow the moon."), Document("b", "Glaciers carve valleys.")]
    sink = QdrantSink("kb", location=":memory:")
    ingest(docs, embedkit.load(model, backend="torch"), sink, progress=False)
    probes = sink.recorded_probes()
    assert len(probes["vectors"]) == len(probes["texts"]) == 3 and len(probes["vectors"][0]) == 32

    onnx = embedkit.load(model, backend="onnx")
    assert onnx.backend == "onnx"
    again = ingest(docs, onnx, sink, progress=False)  # same weights, other runtime: nothing to re-embed
    assert (again.embedded, again.unchanged) == (0, 2)

    write_tiny_bert(model, tiny_bert_dir, seed=1)  # fine-tuned in place: same path, other vectors
    with pytest.raises(StoreError, match=r"does not reproduce its vectors \(probe cosine .*reembed=True"):
        ingest(docs, embedkit.load(model, backend="torch"), sink, progress=False)
    assert sink.recorded_probes() == probes  # nothing was written
    replaced = ingest(docs, embedkit.load(model, backend="torch"), sink, reembed=True, progress=False)
    assert replaced.embedded == 2 and sink.recorded_probes() != probes


def test_bad_documents_raise_or_are_skipped(minilm, sink: QdrantSink, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "good.md").write_text("A good document about tides.")
    (folder / "empty.md").write_text("   \n")
    (folder / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match=r"binary.txt: not UTF-8 text"):
        ingest(load_directory(folder), minilm, sink, progress=False)
    report = ingest(load_directory(folder), minilm, sink, on_error="skip", progress=False)
    assert report.embedded == 1
    assert sorted(where for where, _ in report.skipped) == [str(folder / "binary.txt"), str(folder / "empty.md")]
    with pytest.raises(InputError, match=r"docs\[2\] \(id 'x'\): doc id 'x' was already read in this run"):
        ingest(
            [{"id": "x", "text": "one"}, {"id": "y", "text": "two"}, {"id": "x", "text": "three"}],
            minilm,
            sink,
            progress=False,
        )
    with pytest.raises(InputError, match=r"docs\[0\] has no 'id' field"):
        ingest([{"text": "no id"}], minilm, sink, progress=False)
    with pytest.raises(InputError, match=r"docs\[0\] is int"):
        ingest([3], minilm, sink, progress=False)
    with pytest.raises(InputError, match="no such file or directory"):
        list(load_directory(tmp_path / "missing"))
