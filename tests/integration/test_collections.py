"""Whole collections: the embedded store's engine switch, `push` to another store (resumable), `convert` of a
qdrant-client local-mode folder onto Qdrant Edge, and `embedkit collections list | inspect | drop | push |
convert` with `--index-field`, `--hnsw-ef` and `--exact`.

No Qdrant server binary installs from the package registries here, so push's target is qdrant-client's own
local mode (the same client code path a server URL takes above the HTTP layer), and a server URL is tested
for what can be: one that does not answer fails clearly, after the retries, with nothing changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from embedkit.cli import main
from embedkit.errors import StoreError
from embedkit.ingestion import Document, ingest, load_directory
from embedkit.sinks import Point, QdrantSink
from embedkit.sinks.client import ClientSink
from embedkit.sinks.collections import PUSH_KEY, convert_folder, push
from embedkit.sinks.edge import EdgeSink, store_kind
from embedkit.sinks.qdrant import FINGERPRINT_KEY, VectorConfig


def stored(sink: QdrantSink) -> dict[str, tuple[dict, np.ndarray]]:
    return {p.id: (p.payload, np.asarray(p.vector, dtype=np.float32)) for p in sink.points()}


def assert_same_points(a: QdrantSink, b: QdrantSink) -> None:
    ours, theirs = stored(a), stored(b)
    assert ours.keys() == theirs.keys() and ours
    for key, (payload, vector) in ours.items():
        assert theirs[key][0] == payload, key
        np.testing.assert_allclose(theirs[key][1], vector, atol=1e-6)


@pytest.fixture(scope="module")
def edge_store(tmp_path_factory: pytest.TempPathFactory, minilm, example_docs: Path) -> Path:
    """The example docs ingested into a Qdrant Edge store (collection kb), with an indexed metadata key."""
    path = tmp_path_factory.mktemp("edge") / "qdrant"
    docs = [
        Document(d.id, d.text, {**d.metadata, "lang": "en" if i % 2 else "de"}, source="docs")
        for i, d in enumerate(load_directory(example_docs, source="docs"))
    ]
    with QdrantSink("kb", path=path, index_fields={"lang": "keyword"}) as sink:
        assert isinstance(sink, EdgeSink)
        assert ingest(docs, minilm, sink, progress=False).embedded == 20
    return path


def copy_of(store: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(store, target)
    return target


def test_a_path_is_qdrant_edge_and_ingest_builds_its_index(edge_store: Path) -> None:
    assert store_kind(edge_store) == "edge"
    with QdrantSink("kb", path=edge_store) as sink:
        info = sink.info()
        assert info["engine"] == "edge" and info["points"] == sink.count() > 20
        assert info["vectors"] == {"": {"size": 384, "distance": "Cosine"}}
        assert info["payload_indexes"] == {
            "doc_id": "keyword",
            "source": "keyword",
            "chunk_index": "integer",
            "metadata.lang": "keyword",
        }
        assert info["fingerprint"]["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
        # the end of ingest asked the engine to optimise; this corpus is below the HNSW threshold, so its
        # vectors stay in a plain segment (searched exactly) — the benchmark's 100k points are indexed
        assert sink.indexed_vectors() == 0


def test_push_copies_points_metadata_and_indexes_and_searches_the_same(edge_store: Path, tmp_path: Path, minilm):
    with QdrantSink("kb", path=edge_store) as source, QdrantSink("copy", location=":memory:") as target:
        report = push(source, target, page_size=7)
        assert (report.copied, report.resumed_at, report.target_points) == (source.count(), 0, source.count())
        assert_same_points(source, target)
        assert target.vectors() == source.vectors()
        assert target.metadata()[FINGERPRINT_KEY] == source.recorded_fingerprint()
        assert target.metadata().get(PUSH_KEY) is None  # finished
        query = minilm.embed_query("how do bees keep warm")
        for metadata_filter in (None, {"lang": "en"}, {"source": "docs"}):
            ours = source.search(query, 5, metadata_filter=metadata_filter)
            theirs = target.search(query, 5, metadata_filter=metadata_filter)
            assert [h.id for h in ours] == [h.id for h in theirs]
            np.testing.assert_allclose([h.score for h in ours], [h.score for h in theirs], atol=1e-5)


class Interrupted(ClientSink):
    """A copy target whose connection drops after `pages_left` writes."""

    pages_left: int | None = None

    def upsert_stored(self, points) -> None:
        if self.pages_left is not None:
            if self.pages_left == 0:
                raise StoreError("upsert on 'copy' failed: connection reset")
            self.pages_left -= 1
        super().upsert_stored(points)


def test_an_interrupted_push_resumes_where_it_checkpointed(edge_store: Path, tmp_path: Path) -> None:
    with QdrantSink("kb", path=edge_store) as source:
        total = source.count()
        with Interrupted("copy", path=tmp_path / "local") as target:
            target.pages_left = 20  # 16 pages (the checkpoint interval) and then some
            with pytest.raises(StoreError, match="connection reset"):
                push(source, target, page_size=2)
            state = target.metadata()[PUSH_KEY]
            assert state["copied"] == 32 and target.count() == 40  # checkpointed at 32, 40 sent
            target.pages_left = None
            report = push(source, target, page_size=2)
            assert report.resumed_at == 32 and report.copied == total - 32
            assert target.count() == total and target.metadata().get(PUSH_KEY) is None
            assert_same_points(source, target)


def test_push_refuses_a_target_of_other_vectors_or_another_embedder(edge_store: Path) -> None:
    with QdrantSink("kb", path=edge_store) as source, QdrantSink("t", location=":memory:") as target:
        target.create({"": VectorConfig(8, "Cosine")}, {})
        with pytest.raises(StoreError, match="holds other vectors"):
            push(source, target)
        target.drop()
        target.create(source.vectors(), {FINGERPRINT_KEY: {"model_id": "someone/else"}})
        with pytest.raises(StoreError, match="written by another embedder"):
            push(source, target)
        assert target.count() == 0


def test_push_to_a_server_that_does_not_answer_fails_clearly(edge_store: Path) -> None:
    with QdrantSink("kb", path=edge_store) as source:
        before = source.count()
        target = QdrantSink("kb", url="http://127.0.0.1:9", retry_attempts=2)
        with pytest.raises(StoreError, match="failed"):
            push(source, target)
        assert source.count() == before


def test_convert_moves_a_local_mode_folder_onto_edge_and_keeps_the_original(tmp_path: Path, minilm) -> None:
    folder = tmp_path / "qdrant"
    docs = [Document(f"d{i}", f"Document {i} is about topic {i % 3}.", {"n": i}) for i in range(30)]
    with QdrantSink("kb", path=folder, engine="client-local") as sink:
        ingest(docs, minilm, sink, progress=False)
        before = stored(sink)
        fingerprint = sink.recorded_fingerprint()
    with pytest.raises(StoreError, match="not a qdrant-client local-mode store"):
        convert_folder(tmp_path / "elsewhere")
    backup = convert_folder(folder)
    assert backup == tmp_path / "qdrant.client-local-backup" and store_kind(backup) == "client-local"
    assert store_kind(folder) == "edge"
    with QdrantSink("kb", path=folder) as sink:
        assert isinstance(sink, EdgeSink) and sink.recorded_fingerprint() == fingerprint
        after = stored(sink)
        assert after.keys() == before.keys()
        assert all(after[key][0] == before[key][0] for key in before)
        # the converted collection is complete to ingest: nothing is embedded again
        assert ingest(docs, minilm, sink, progress=False).embedded == 0
    # a second local-mode folder whose backup name is taken is left as it is
    with QdrantSink("kb", path=tmp_path / "other", engine="client-local") as sink:
        sink.prepare(2, {"model_id": "test"})
    (tmp_path / "other.client-local-backup").mkdir()
    with pytest.raises(StoreError, match="client-local-backup exists"):
        convert_folder(tmp_path / "other")
    assert store_kind(tmp_path / "other") == "client-local"


def test_a_user_subclass_of_qdrant_sink_runs_on_either_engine(tmp_path: Path) -> None:
    class Counting(QdrantSink):
        upserts = 0

        def upsert(self, points) -> None:
            self.upserts += 1
            super().upsert(points)

    for engine in ("edge", "client-local"):
        with Counting("kb", path=tmp_path / engine, engine=engine) as sink:
            assert isinstance(sink, Counting) and sink.engine == engine
            sink.prepare(2, {"model_id": "test"})
            sink.upsert([Point("00000000-0000-0000-0000-000000000001", [1.0, 0.0], {"doc_id": "a"})])
            assert sink.upserts == 1 and sink.count() == 1


# -- the command line ------------------------------------------------------------------------------


def test_collections_list_inspect_push_and_drop(
    edge_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = copy_of(edge_store, tmp_path)
    assert main(["collections", "list", "--qdrant-path", str(store)]) == 0
    name, points, engine, model = capsys.readouterr().out.strip().split("\t")
    assert (name, engine, model) == ("kb", "edge", "sentence-transformers/all-MiniLM-L6-v2")

    assert main(["collections", "inspect", "kb", "--qdrant-path", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert f"{info['points']} points" == points and info["payload_indexes"]["metadata.lang"] == "keyword"
    assert main(["collections", "inspect", "kb", "--qdrant-path", str(store)]) == 0
    assert "metadata.lang=keyword" in capsys.readouterr().out

    local = tmp_path / "for-langchain"
    assert main(["collections", "push", "kb", "--qdrant-path", str(store), "--to-path", str(local), "--quiet"]) == 0
    assert f"{info['points']} points copied" in capsys.readouterr().out
    assert store_kind(local) == "client-local"
    with QdrantSink("kb", path=store) as source, QdrantSink("kb", path=local) as copy:
        assert copy.engine == "client-local"
        assert_same_points(source, copy)

    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["collections", "drop", "kb", "--qdrant-path", str(store)]) == 1
    assert "add --yes" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["collections", "drop", "kb", "--qdrant-path", str(store)]) == 1
    assert main(["collections", "drop", "kb", "--qdrant-path", str(store), "--yes"]) == 0
    assert "dropped 'kb'" in capsys.readouterr().out
    assert main(["collections", "list", "--qdrant-path", str(store)]) == 0
    assert "no collections" in capsys.readouterr().err
    assert main(["collections", "inspect", "kb", "--qdrant-path", str(store)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_engines_index_fields_and_search_parameters(
    tmp_path: Path, example_docs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = str(example_docs)
    edge, local = str(tmp_path / "edge"), str(tmp_path / "local")
    common = ["--collection", "kb", "--quiet"]
    assert (
        main(["ingest", docs, *common, "--qdrant-path", edge, "--index-field", "source", "--index-field", "n:integer"])
        == 0
    )
    assert main(["ingest", docs, *common, "--qdrant-path", local, "--qdrant-engine", "client-local"]) == 0
    capsys.readouterr()
    assert store_kind(edge) == "edge" and store_kind(local) == "client-local"
    with QdrantSink("kb", path=edge) as sink:
        assert {"metadata.source": "keyword", "metadata.n": "integer"}.items() <= sink.payload_indexes().items()

    found = {}
    for path, extra in ((edge, []), (edge, ["--exact"]), (edge, ["--hnsw-ef", "8"]), (local, [])):
        assert (
            main(
                [
                    "search",
                    "why do bees shiver",
                    "--json",
                    "-k",
                    "3",
                    "--collection",
                    "kb",
                    "--qdrant-path",
                    path,
                    *extra,
                ]
            )
            == 0
        )
        found[(path, *extra)] = [json.loads(line)["doc_id"] for line in capsys.readouterr().out.splitlines()]
    assert len(set(map(tuple, found.values()))) == 1 and len(found[(edge,)]) == 3

    assert main(["ingest", docs, *common, "--qdrant-path", local, "--qdrant-engine", "edge"]) == 1
    assert "holds a qdrant-client local-mode store" in capsys.readouterr().err
    assert (
        main(["search", "bees", "--collection", "kb", "--qdrant-url", "http://127.0.0.1:9", "--qdrant-engine", "edge"])
        == 1
    )
    assert "--qdrant-engine is for an embedded store" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ingest", docs, *common, "--index-field", "n:text"])
    assert "KEY:TYPE with TYPE one of keyword, integer, float, bool" in capsys.readouterr().err


def test_convert_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "qdrant"
    with QdrantSink("kb", path=folder, engine="client-local") as sink:
        sink.prepare(2, {"model_id": "test"})
        sink.upsert([Point("00000000-0000-0000-0000-000000000001", [1.0, 0.0], {"doc_id": "a"})])
    assert main(["collections", "convert", "--qdrant-path", str(folder)]) == 0
    assert "now holds Qdrant Edge collections" in capsys.readouterr().out
    with QdrantSink("kb", path=folder) as sink:
        assert sink.engine == "edge" and sink.count() == 1 and sink.recorded_fingerprint() == {"model_id": "test"}
    assert main(["collections", "convert", "--qdrant-path", str(folder)]) == 1
    assert "not a qdrant-client local-mode store" in capsys.readouterr().err
