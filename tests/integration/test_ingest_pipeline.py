"""The ingest pipeline on the default model and the embedded Qdrant store: idempotent, resumable, exact.

Embed calls are counted by wrapping the real model; the sink is the real QdrantSink, made to fail on
cue where a test needs a store that goes down mid-run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from embedkit.chunking import Chunker
from embedkit.errors import InputError, StoreError
from embedkit.ingestion import PROBE_TEXTS, Document, ingest, load_directory, load_jsonl, point_id
from embedkit.sinks import Point, QdrantSink
from embedkit.sinks.qdrant import VectorConfig


class Counting:
    """The real embedder, counting the chunks it is asked to embed."""

    def __init__(self, embedder) -> None:
        self._embedder = embedder
        self.calls = 0
        self.texts = 0
        self.fail_after: int | None = None  # raise on this call number

    def __getattr__(self, name: str):
        return getattr(self._embedder, name)

    def embed(self, texts, **kwargs):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("embedder failed mid-run")
        self.texts += len(texts)
        return self._embedder.embed(texts, **kwargs)


class Flaky(QdrantSink):
    """A real QdrantSink whose store 'goes down' after `upserts_left` upserts."""

    upserts_left: int | None = None

    def upsert(self, points) -> None:
        if self.upserts_left is not None:
            if self.upserts_left == 0:
                raise StoreError("upsert into 'kb' failed: connection refused")
            self.upserts_left -= 1
        super().upsert(points)


def snapshot(sink: QdrantSink) -> dict[str, tuple[dict, list[float]]]:
    return {p.id: (p.payload, p.vector) for p in sink.points()}


def assert_same_collection(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key][0] == b[key][0], key
        np.testing.assert_allclose(a[key][1], b[key][1], atol=1e-6)


@pytest.fixture()
def corpus(tmp_path: Path, example_docs: Path) -> Path:
    target = tmp_path / "docs"
    shutil.copytree(example_docs, target)
    return target


@pytest.fixture()
def counting(minilm) -> Counting:
    return Counting(minilm)


def sink_at(path: Path, cls: type[QdrantSink] = QdrantSink, **kwargs: object) -> QdrantSink:
    return cls("kb", path=path, **kwargs)


def unhash(sink: QdrantSink, point: str) -> None:
    """Store `point` again without its content hash: what a run killed before mark_complete leaves."""
    stored = next(p for p in sink.points() if p.id == point)
    payload = {key: value for key, value in stored.payload.items() if key != "content_hash"}
    sink.upsert([Point(stored.id, stored.vector, payload)])


def test_rerun_edit_and_delete_missing(tmp_path: Path, corpus: Path, counting: Counting) -> None:
    sink = sink_at(tmp_path / "q")
    try:
        first = ingest(load_directory(corpus, source="docs"), counting, sink, progress=False)
        # a new collection records the vectors of the probe texts, then every chunk is embedded once
        assert (first.embedded, first.unchanged) == (20, 0) and counting.texts == first.chunks + len(PROBE_TEXTS)
        assert first.tokens_per_second > 0 and "tokens/s" in first.summary() and "documents seen" in first.table()

        counting.texts = 0
        again = ingest(load_directory(corpus, source="docs"), counting, sink, progress=False)
        assert (again.embedded, again.unchanged, again.chunks, counting.texts) == (0, 20, 0, 0)

        # editing one doc re-embeds it alone; shortening it removes its surplus chunks
        before = sink.count()
        old_chunks = sum(1 for _, (payload, _) in snapshot(sink).items() if payload["doc_id"] == "docs/composting.md")
        (corpus / "composting.md").write_text("# Composting\n\nShort now.\n")
        edited = ingest(load_directory(corpus, source="docs"), counting, sink, progress=False)
        assert (edited.embedded, edited.unchanged, edited.chunks, counting.texts) == (1, 19, 1, 1)
        assert edited.deleted == old_chunks - 1 and sink.count() == before - old_chunks + 1

        # a file deleted from the source leaves the collection only with delete_missing
        (corpus / "volcanoes.md").unlink()
        kept = ingest(load_directory(corpus, source="docs"), counting, sink, progress=False)
        assert kept.deleted_docs == 0 and any(p["doc_id"] == "docs/volcanoes.md" for p, _ in snapshot(sink).values())
        removed = ingest(load_directory(corpus, source="docs"), counting, sink, delete_missing=True, progress=False)
        assert removed.deleted_docs == 1 and removed.deleted > 0 and counting.texts == 1
        assert not any(p["doc_id"] == "docs/volcanoes.md" for p, _ in snapshot(sink).values())
    finally:
        sink.close()


class CountingChunker(Chunker):
    """A real Chunker recording which texts it was asked to split."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.split_texts: list[str] = []

    def split(self, text, *, strategy=None):
        self.split_texts.append(text)
        return super().split(text, strategy=strategy)


def test_a_complete_doc_is_skipped_before_it_is_chunked(tmp_path: Path, corpus: Path, minilm) -> None:
    sink = sink_at(tmp_path / "q")
    try:
        chunker = CountingChunker(minilm, 128)
        first = ingest(load_directory(corpus, source="docs"), minilm, sink, chunker, progress=False)
        assert len(chunker.split_texts) == first.chunked == first.embedded == 20

        chunker.split_texts.clear()
        again = ingest(load_directory(corpus, source="docs"), minilm, sink, chunker, progress=False)
        assert (again.unchanged, again.chunked, chunker.split_texts) == (20, 0, [])

        edited = "# Composting\n\nShort now.\n"
        (corpus / "composting.md").write_text(edited)
        # the same doc stored with only some of its points hashed (a run killed before mark_complete) is pending
        stored = next(p for p, _ in snapshot(sink).values() if p["doc_id"] == "docs/volcanoes.md")
        unhash(sink, point_id("docs/volcanoes.md", 0))
        rerun = ingest(load_directory(corpus, source="docs"), minilm, sink, chunker, progress=False)
        assert (rerun.unchanged, rerun.chunked, rerun.embedded) == (18, 2, 2)
        assert chunker.split_texts == [edited, (corpus / "volcanoes.md").read_bytes().decode()]  # source order
        assert stored["content_hash"] in {p.get("content_hash") for p, _ in snapshot(sink).values()}
    finally:
        sink.close()


def test_sink_down_mid_run_then_rerun_completes_exactly(tmp_path: Path, corpus: Path, minilm) -> None:
    clean = sink_at(tmp_path / "clean")
    try:
        ingest(load_directory(corpus, source="docs"), minilm, clean, batch_tokens=600, progress=False)
        expected = snapshot(clean)
    finally:
        clean.close()

    flaky = sink_at(tmp_path / "flaky", Flaky)
    try:
        flaky.upserts_left = 7
        with pytest.raises(StoreError, match="connection refused"):
            ingest(load_directory(corpus, source="docs"), minilm, flaky, batch_tokens=600, progress=False)
        written = snapshot(flaky)
        assert 0 < len(written) < len(expected)
        complete = {p["doc_id"] for p, _ in written.values() if p.get("content_hash")}
        assert len(complete) == 7  # exactly the docs written before the failure are marked done
        flaky.upserts_left = None
        rerun = ingest(load_directory(corpus, source="docs"), minilm, flaky, batch_tokens=600, progress=False)
        assert rerun.unchanged == 7 and rerun.embedded == 13
        assert_same_collection(snapshot(flaky), expected)
    finally:
        flaky.close()


def test_embedder_failing_mid_batch_loses_nothing(tmp_path: Path, corpus: Path, counting: Counting) -> None:
    sink = sink_at(tmp_path / "q")
    try:
        counting.fail_after = 2
        with pytest.raises(RuntimeError, match="embedder failed mid-run"):
            ingest(load_directory(corpus, source="docs"), counting, sink, batch_tokens=800, progress=False)
        done = {p["doc_id"] for p, _ in snapshot(sink).values() if p.get("content_hash")}
        assert 0 < len(done) < 20
        counting.fail_after = None
        rerun = ingest(load_directory(corpus, source="docs"), counting, sink, batch_tokens=800, progress=False)
        assert rerun.unchanged == len(done) and rerun.embedded == 20 - len(done)
        assert all(p.get("content_hash") for p, _ in snapshot(sink).values())
    finally:
        sink.close()


def test_bad_documents_are_reported_and_nothing_is_half_written(tmp_path: Path, minilm) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "good.md").write_text("# Good\n\nA fine document.")
    (source / "empty.md").write_text("   \n")
    (source / "binary.txt").write_bytes(b"\xff\xfe\x00bad bytes")
    docs = [*load_directory(source, source="src"), {"id": "n", "text": 42}, Document("src/good.md", "duplicate id")]
    sink = sink_at(tmp_path / "q")
    try:
        report = ingest(docs, minilm, sink, on_error="skip", progress=False)
        reasons = dict(report.skipped)
        assert report.embedded == 1 and len(report.skipped) == 4
        assert "not UTF-8" in reasons[str(source / "binary.txt")] and "empty file" in reasons[str(source / "empty.md")]
        assert "text is int" in reasons["docs[3] (id 'n')"] and "already read" in reasons["docs[4]"]
        assert {p["doc_id"] for p, _ in snapshot(sink).values()} == {"src/good.md"}
        with pytest.raises(InputError, match="not UTF-8"):
            ingest(load_directory(source), minilm, sink, progress=False)
    finally:
        sink.close()


def test_wrong_dimension_collection_fails_before_any_write(tmp_path: Path, minilm) -> None:
    sink = sink_at(tmp_path / "q")
    try:
        sink.create({"": VectorConfig(8, "Cosine")}, {})  # a collection another tool made
        with pytest.raises(StoreError, match="holds 8-d vectors"):
            ingest([Document("a", "some text")], minilm, sink, progress=False)
        assert sink.count() == 0
    finally:
        sink.close()


def test_jsonl_source_and_named_vector(tmp_path: Path, minilm) -> None:
    lines = [
        {"id": "a", "text": "Bees make honey in the hive.", "metadata": {"lang": "en"}},
        {"id": "b", "text": "Volcanoes erupt lava.", "topic": "geology"},
        "not an object",
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n{broken\n")
    docs = list(load_jsonl(path, source="export"))
    assert [getattr(d, "id", None) for d in docs[:2]] == ["export/a", "export/b"]
    assert docs[1].metadata == {"topic": "geology"}
    sink = sink_at(tmp_path / "q", vector_name="dense")
    try:
        report = ingest(docs, minilm, sink, on_error="skip", progress=False)
        assert report.embedded == 2 and [r for _, r in report.skipped][1].startswith(f"{path}:4: not a JSON line")
        hit = sink.search(minilm.embed_query("honey"), 1, metadata_filter={"lang": "en"})[0]
        assert hit.id == point_id("export/a", 0) and hit.payload["metadata"] == {"lang": "en"}
        assert sink.vectors() == {"dense": VectorConfig(384, "Cosine")}
    finally:
        sink.close()


def test_custom_chunker_settings_change_the_content_hash(tmp_path: Path, minilm) -> None:
    sink = sink_at(tmp_path / "q")
    doc = [Document("d", "# T\n\n" + "A sentence about compost. " * 40)]
    try:
        first = ingest(doc, minilm, sink, Chunker(minilm, 64), progress=False)
        same = ingest(doc, minilm, sink, Chunker(minilm, 64), progress=False)
        other = ingest(doc, minilm, sink, Chunker(minilm, 32), progress=False)
        assert (first.embedded, same.unchanged, other.embedded) == (1, 1, 1)
        assert other.chunks > first.chunks and sink.count() == other.chunks
    finally:
        sink.close()


def test_transient_store_errors_are_retried(minilm) -> None:
    from qdrant_client import QdrantClient
    from qdrant_client.http.exceptions import ResponseHandlingException

    class Unsteady(QdrantClient):
        failures = 2
        attempts = 0

        def upsert(self, *args, **kwargs):
            type(self).attempts += 1
            if type(self).failures:
                type(self).failures -= 1
                raise ResponseHandlingException(ConnectionError("connection reset"))
            return super().upsert(*args, **kwargs)

    sink = QdrantSink("kb", client=Unsteady(location=":memory:"))
    report = ingest([Document("a", "Some text about tides.")], minilm, sink, progress=False)
    assert report.embedded == 1 and Unsteady.attempts == 3 and sink.count() == 1
    Unsteady.failures = 10
    with pytest.raises(StoreError, match="connection reset"):
        ingest(
            [Document("b", "Other text.")],
            minilm,
            QdrantSink("kb", client=Unsteady(location=":memory:"), retry_attempts=2),
            progress=False,
        )


def test_disk_full_stops_with_a_report_and_a_rerun_completes(tmp_path: Path, corpus: Path, minilm) -> None:
    import errno

    class FullDisk(QdrantSink):
        writes_left: int | None = 5

        def upsert(self, points) -> None:
            original = self.client.upsert

            def failing(*args, **kwargs):
                if self.writes_left == 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                if self.writes_left is not None:
                    self.writes_left -= 1
                return original(*args, **kwargs)

            self.client.upsert = failing
            try:
                super().upsert(points)
            finally:
                self.client.upsert = original

    sink = sink_at(tmp_path / "q", FullDisk, retry_attempts=1, engine="client-local")  # fails in qdrant-client
    try:
        with pytest.raises(StoreError, match="No space left on device") as caught:
            ingest(load_directory(corpus, source="docs"), minilm, sink, progress=False)
        report = caught.value.report
        assert report.embedded == 5 and report.docs >= 5
        complete = {p["doc_id"] for p, _ in snapshot(sink).values() if p.get("content_hash")}
        assert len(complete) == report.embedded  # the report says exactly what is stored
        sink.writes_left = None
        rerun = ingest(load_directory(corpus, source="docs"), minilm, sink, progress=False)
        assert rerun.unchanged == 5 and rerun.embedded == 15
        assert all(p.get("content_hash") for p, _ in snapshot(sink).values())
    finally:
        sink.close()


# qdrant-client leaves its .lock file open when it refuses a locked folder (its leak, reported at GC)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_store_unreachable_or_locked_is_a_clear_error(tmp_path: Path, minilm) -> None:
    import subprocess
    import sys

    refusing = QdrantSink("kb", url="http://127.0.0.1:9", retry_attempts=2)
    with pytest.raises(StoreError, match="failed") as caught:
        ingest([Document("a", "text")], minilm, refusing, progress=False)
    assert "127.0.0.1:9" in str(caught.value) or "Connection refused" in str(caught.value)

    for engine in ("edge", "client-local"):
        store = tmp_path / engine
        holder = subprocess.Popen(
            [sys.executable, "-c", "from embedkit.sinks import QdrantSink; "
             f"s = QdrantSink('kb', path={str(store)!r}, engine={engine!r}); s.prepare(4, {{'model_id': 'x'}}); "
             "print('open', flush=True); import time; time.sleep(60)"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
            with pytest.raises(StoreError, match="in use by another process"):
                QdrantSink("kb", path=store)  # the engine the folder holds, found by looking
            import gc

            gc.collect()  # collect qdrant-client's leaked handle here, under this test's filter
        finally:
            holder.kill()
            holder.wait()
            holder.stdout.close()
