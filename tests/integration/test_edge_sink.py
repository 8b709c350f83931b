"""EdgeSink (a Qdrant Edge shard per collection) under the behaviours QdrantSink's tests check, through
`embedkit.ingest` on the default model: idempotent re-runs, one edited doc re-embedded alone, delete_missing,
a store failing mid-run and a process killed mid-run both ending, after a re-run, as a clean run does,
filters as JSON stored them, score threshold and exact search, and the shard's lifecycle.

Mirrors tests/integration/test_ingest_pipeline.py, tests/integration/test_search_filters.py and
tests/unit/test_sink_lifecycle.py.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe

from embedkit.errors import InputError, StoreError
from embedkit.ingestion import PROBE_TEXTS, Document, ingest, load_directory, point_id
from embedkit.ingestion.records import ID_SCHEME
from embedkit.sinks.edge import RECORD_FILE, EdgeSink


class Counting:
    """The real embedder, counting the chunks it is asked to embed."""

    def __init__(self, embedder) -> None:
        self._embedder = embedder
        self.texts = 0

    def __getattr__(self, name: str):
        return getattr(self._embedder, name)

    def embed(self, texts, **kwargs):
        self.texts += len(texts)
        return self._embedder.embed(texts, **kwargs)


class Flaky(EdgeSink):
    """A real EdgeSink whose store 'goes down' after `upserts_left` upserts."""

    upserts_left: int | None = None

    def upsert(self, points) -> None:
        if self.upserts_left is not None:
            if self.upserts_left == 0:
                raise StoreError("upsert into 'kb' failed: disk gone")
            self.upserts_left -= 1
        super().upsert(points)


def snapshot(sink: EdgeSink) -> dict[str, tuple[dict, list[float]]]:
    records, offset = sink.shard.scroll(qe.ScrollRequest(limit=10_000, with_payload=True, with_vector=True))
    assert offset is None
    return {str(r.id): (dict(r.payload), r.vector) for r in records}


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


def test_rerun_edit_and_delete_missing(tmp_path: Path, corpus: Path, minilm) -> None:
    counting = Counting(minilm)
    with EdgeSink("kb", path=tmp_path / "store") as sink:
        first = ingest(load_directory(corpus, source="docs"), counting, sink, progress=False)
        assert (first.embedded, first.unchanged) == (20, 0) and counting.texts == first.chunks + len(PROBE_TEXTS)
        assert sink.count() == first.chunks
        assert {"doc_id", "source", "chunk_index"} <= set(sink.payload_indexes())

        counting.texts = 0
        again = ingest(load_directory(corpus, source="docs"), counting, sink, progress=False)
        assert (again.embedded, again.unchanged, again.chunks, counting.texts) == (0, 20, 0, 0)

        before = sink.count()
        old_chunks = sum(1 for payload, _ in snapshot(sink).values() if payload["doc_id"] == "docs/composting.md")
        assert old_chunks > 1
        (corpus / "composting.md").write_text("# Composting\n\nShort now.\n")
        edited = ingest(load_directory(corpus, source="docs"), counting, sink, progress=False)
        assert (edited.embedded, edited.unchanged, edited.chunks, counting.texts) == (1, 19, 1, 1)
        assert edited.deleted == old_chunks - 1 and sink.count() == before - old_chunks + 1

        (corpus / "volcanoes.md").unlink()
        kept = ingest(load_directory(corpus, source="docs"), counting, sink, progress=False)
        assert kept.deleted_docs == 0 and any(p["doc_id"] == "docs/volcanoes.md" for p, _ in snapshot(sink).values())
        removed = ingest(load_directory(corpus, source="docs"), counting, sink, delete_missing=True, progress=False)
        assert removed.deleted_docs == 1 and removed.deleted > 0 and counting.texts == 1
        assert not any(p["doc_id"] == "docs/volcanoes.md" for p, _ in snapshot(sink).values())


def test_a_partly_hashed_doc_is_pending_and_reopening_keeps_everything(tmp_path: Path, corpus: Path, minilm) -> None:
    store = tmp_path / "store"
    with EdgeSink("kb", path=store) as sink:
        ingest(load_directory(corpus, source="docs"), minilm, sink, progress=False)
        expected = snapshot(sink)
        fingerprint, probes = sink.recorded_fingerprint(), sink.recorded_probes()
    assert (
        fingerprint
        and probes
        and json.loads((store / "kb" / RECORD_FILE).read_text())["metadata"]["embedkit"] == fingerprint
    )

    with EdgeSink("kb", path=store) as sink:  # reopened: the same points, record and indexes
        assert_same_collection(snapshot(sink), expected)
        assert (sink.recorded_fingerprint(), sink.recorded_probes()) == (fingerprint, probes)
        # a doc with only some points hashed (a run killed before mark_complete finished) is embedded again
        sink.shard.update(qe.UpdateOperation.delete_payload([point_id("docs/volcanoes.md", 0)], ["content_hash"]))
        rerun = ingest(load_directory(corpus, source="docs"), minilm, sink, progress=False)
        assert (rerun.unchanged, rerun.embedded) == (19, 1)
        assert_same_collection(snapshot(sink), expected)


def test_sink_down_mid_run_then_rerun_completes_exactly(tmp_path: Path, corpus: Path, minilm) -> None:
    with EdgeSink("kb", path=tmp_path / "clean") as clean:
        ingest(load_directory(corpus, source="docs"), minilm, clean, batch_tokens=600, progress=False)
        expected = snapshot(clean)

    with Flaky("kb", path=tmp_path / "flaky") as flaky:
        flaky.upserts_left = 7
        with pytest.raises(StoreError, match="disk gone"):
            ingest(load_directory(corpus, source="docs"), minilm, flaky, batch_tokens=600, progress=False)
        written = snapshot(flaky)
        assert 0 < len(written) < len(expected)
        assert len({p["doc_id"] for p, _ in written.values() if p.get("content_hash")}) == 7
        flaky.upserts_left = None
        rerun = ingest(load_directory(corpus, source="docs"), minilm, flaky, batch_tokens=600, progress=False)
        assert rerun.unchanged == 7 and rerun.embedded == 13
        assert_same_collection(snapshot(flaky), expected)


KILLED_RUN = """
import os, sys
import embedkit
from embedkit.ingestion import ingest, load_directory
from embedkit.sinks.edge import EdgeSink

class Killed(EdgeSink):
    left = int(sys.argv[3])
    def upsert(self, points):
        if self.left == 0:
            os._exit(9)  # no flush, no close: only the WAL keeps what was written
        self.left -= 1
        super().upsert(points)

sink = Killed("kb", path=sys.argv[2])
ingest(load_directory(sys.argv[1], source="docs"), embedkit.load(device="cpu"), sink, batch_tokens=600, progress=False)
"""


def test_a_process_killed_mid_run_then_rerun_equals_a_clean_run(tmp_path: Path, corpus: Path, minilm) -> None:
    with EdgeSink("kb", path=tmp_path / "clean") as clean:
        ingest(load_directory(corpus, source="docs"), minilm, clean, batch_tokens=600, progress=False)
        expected = snapshot(clean)
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_RUN), str(corpus), str(tmp_path / "killed"), "5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == 9, killed.stderr
    with EdgeSink("kb", path=tmp_path / "killed") as sink:
        assert 0 < sink.count() < len(expected)
        rerun = ingest(load_directory(corpus, source="docs"), minilm, sink, batch_tokens=600, progress=False)
        assert rerun.unchanged == 5 and rerun.embedded == 15
        assert_same_collection(snapshot(sink), expected)


def test_wrong_dimension_or_vector_name_fails_before_any_write(tmp_path: Path, minilm) -> None:
    with EdgeSink("kb", path=tmp_path / "store") as sink:
        sink.prepare(8, {"model_id": "other", "id_scheme": ID_SCHEME})
        with pytest.raises(StoreError, match="holds 8-d vectors with cosine distance; this embedder gives 384-d"):
            ingest([Document("a", "some text")], minilm, sink, progress=False)
        assert sink.count() == 0
    with EdgeSink("kb", path=tmp_path / "store", vector_name="dense") as named:
        with pytest.raises(StoreError, match="has no vector named 'dense' \\(one unnamed vector\\)"):
            ingest([Document("a", "some text")], minilm, named, progress=False)


DOCS_A = [
    {
        "id": "bees.md",
        "text": "Honeybees keep warm in winter.",
        "metadata": {"year": "2024", "draft": True, "score": 0.5},
    },
    {"id": "git.md", "text": "Git branches are cheap pointers.", "metadata": {"year": 2024, "draft": "true"}},
    {
        "id": "coffee.md",
        "text": "Brew coffee at 93 degrees.",
        "metadata": {"year": 2023, "draft": False, "score": 0.25},
    },
    {"id": "tea.md", "text": "Green tea wants cooler water.", "metadata": {"year": "2023", "score": 1, "lang": "de"}},
]
DOCS_B = [{"id": "bees.md", "text": "Wild bees nest in the ground.", "metadata": {"lang": "en", "source": "web"}}]


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory, minilm):
    path = tmp_path_factory.mktemp("edge-filters") / "store"
    indexes = {"year": "integer", "lang": "keyword"}
    # a 1 KB indexing threshold: HNSW is built over these few points, so searches below go through it
    with EdgeSink("kb", path=path, vector_name="dense", index_fields=indexes, indexing_threshold_kb=1) as sink:
        first = ingest(DOCS_A, minilm, sink, source="notes/a", progress=False)
        assert sink.indexed_vectors() == first.chunks == 4 and first.index_seconds > 0  # ingest's last step
        ingest(DOCS_B, minilm, sink, source="notes/b", progress=False)
        assert sink.payload_indexes()["metadata.year"] == "integer"
        assert sink.indexed_vectors() == 5 and not sink.optimize()  # nothing left to do
        yield sink


@pytest.mark.parametrize(
    ("metadata_filter", "expected"),
    [
        ({"year": 2024}, {"notes/a/git.md"}),  # an int finds only the integer
        ({"year": "2024"}, {"notes/a/bees.md"}),
        ({"year": ["2024", 2024]}, {"notes/a/bees.md", "notes/a/git.md"}),  # a mixed list
        ({"draft": True}, {"notes/a/bees.md"}),  # a boolean, not the integer 1 (see _match_value)
        ({"draft": False}, {"notes/a/coffee.md"}),
        ({"score": 0.25}, {"notes/a/coffee.md"}),
        ({"score": 1.0}, {"notes/a/tea.md"}),  # a decimal matches an integer equal to it
        ({"source": "notes/b"}, {"notes/b/bees.md"}),
        ({"source": "web"}, {"notes/b/bees.md"}),  # plain source reaches the metadata key too
        ({"metadata.source": "notes/b"}, set()),  # metadata.KEY is the metadata key alone
        ({"doc_id": ["notes/a/bees.md", "notes/b/bees.md"]}, {"notes/a/bees.md", "notes/b/bees.md"}),
        ({"source": ["notes/a"], "lang": "de"}, {"notes/a/tea.md"}),
    ],
)
def test_filters_match_what_json_stored(filtered: EdgeSink, minilm, metadata_filter: dict, expected: set) -> None:
    vector = minilm.embed_query("bees")
    hits = filtered.search(vector, 20, metadata_filter=metadata_filter)
    assert {hit.payload["doc_id"] for hit in hits} == expected
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_unknown_keys_bad_values_threshold_and_exact_search(filtered: EdgeSink, minilm) -> None:
    vector = minilm.embed_query("bees")
    with pytest.raises(InputError, match=r"no point in collection 'kb' has metadata key 'colour' \(keys seen: draft, "):
        filtered.search(vector, 3, metadata_filter={"colour": "red"})
    with pytest.raises(InputError, match="match a str, int, bool, finite float"):
        filtered.search(vector, 3, metadata_filter={"score": float("nan")})
    with pytest.raises(InputError, match="k must be an int >= 1"):
        filtered.search(vector, 0)
    assert filtered.search(vector, 3, metadata_filter={"year": 1999}) == []  # a known key, no such value

    every = filtered.search(vector, 20, exact=True)
    assert len(every) == 5 and [h.id for h in filtered.search(vector, 20, hnsw_ef=128)] == [h.id for h in every]
    cut = (every[1].score + every[2].score) / 2
    assert [h.id for h in filtered.search(vector, 20, score_threshold=cut)] == [h.id for h in every[:2]]
    assert every[0].payload["doc_id"].endswith("bees.md") and every[0].id == point_id(every[0].payload["doc_id"], 0)


def test_close_reopen_and_a_closed_sink_says_so(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with EdgeSink("kb", path=store) as sink:
        assert not sink.exists() and sink.count() == 0 and sink.recorded_fingerprint() is None
        sink.prepare(4, {"model_id": "test"})
        assert sink.exists() and sink.recorded_fingerprint() == {"model_id": "test"}
    sink.close()  # again: nothing to do
    with pytest.raises(StoreError, match=r"QdrantSink of collection 'kb' at .* is closed"):
        sink.exists()
    with pytest.raises(StoreError, match="is closed"):
        sink.count()
    # closed: another process may open the shard; open here, it is in use for another process
    code = f"import qdrant_edge as qe; qe.EdgeShard.load({str(store / 'kb' / 'shard')!r}).close()"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0
    with EdgeSink("kb", path=store) as reopened:
        holder = f"from embedkit.sinks.edge import EdgeSink; EdgeSink('kb', path={str(store)!r})"
        other = subprocess.run([sys.executable, "-c", holder], capture_output=True, text=True, timeout=120)
        assert other.returncode != 0 and "is in use by another process" in other.stderr
        assert reopened.recorded_fingerprint() == {"model_id": "test"}


def test_two_sinks_share_one_shard_and_a_stale_one_reopens(tmp_path: Path) -> None:
    first = EdgeSink("kb", path=tmp_path / "store")
    first.prepare(4, {"model_id": "test"})
    second = EdgeSink("kb", path=tmp_path / "store")  # the same shard, opened once in this process
    assert second.shard is first.shard
    first.close()
    try:
        assert second.exists() and second.count() == 0  # reopens the shard first closed
    finally:
        second.close()


@pytest.mark.parametrize(
    ("name", "refusal"), [("a/b", "cannot contain '/'"), ("x" * 300, "at most 255"), ("..", "'..'")]
)
def test_collection_names_a_folder_cannot_hold(tmp_path: Path, name: str, refusal: str) -> None:
    with pytest.raises(InputError, match=f"collection name .* is refused by the Qdrant store at {tmp_path}.*{refusal}"):
        EdgeSink(name, path=tmp_path)


def test_store_path_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "store"
    target.write_text("not a store")
    with pytest.raises(StoreError, match=f"store at {target}: it is a file, not a directory"):
        EdgeSink("kb", path=target)


def test_a_client_local_folder_is_detected_and_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from embedkit.sinks import QdrantSink
    from embedkit.sinks.edge import store_kind

    assert store_kind(tmp_path / "none") is None and store_kind(tmp_path) is None
    with QdrantSink("kb", path=tmp_path / "local", engine="client-local") as sink:
        sink.prepare(4, {"model_id": "test"})
    before = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "local").rglob("*"))
    assert store_kind(tmp_path / "local") == "client-local"
    with pytest.raises(StoreError, match=r"holds a qdrant-client local-mode store .*nothing is converted silently"):
        EdgeSink("collection", path=tmp_path / "local")
    with pytest.raises(StoreError, match=r"holds a qdrant-client local-mode store .*nothing is converted silently"):
        QdrantSink("kb", path=tmp_path / "local", engine="edge")
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "local").rglob("*")) == before
    # without an engine named, the folder is opened as it is, in local mode, with a warning naming the command
    with caplog.at_level(logging.WARNING, logger="embedkit.sinks.qdrant"):
        with QdrantSink("kb", path=tmp_path / "local") as sink:
            assert sink.engine == "client-local" and sink.recorded_fingerprint() == {"model_id": "test"}
    assert "embedkit collections convert" in caplog.text
    with QdrantSink("kb", path=tmp_path / "edge") as sink:
        assert isinstance(sink, EdgeSink) and sink.engine == "edge"
        sink.prepare(4, {"model_id": "test"})
    assert store_kind(tmp_path / "edge") == "edge"
    with pytest.raises(StoreError, match="holds Qdrant Edge collections, which qdrant-client's local mode cannot"):
        QdrantSink("kb", path=tmp_path / "edge", engine="client-local")


def test_a_shard_left_without_its_record_is_made_again(tmp_path: Path) -> None:
    with EdgeSink("kb", path=tmp_path / "store") as sink:
        sink.prepare(4, {"model_id": "test"})
    (tmp_path / "store" / "kb" / RECORD_FILE).unlink()  # as if prepare was killed before writing it
    with EdgeSink("kb", path=tmp_path / "store") as sink:
        assert not sink.exists()
        sink.prepare(8, {"model_id": "new"})
        assert sink.recorded_fingerprint() == {"model_id": "new"} and sink.count() == 0


RANDOM_KILL_RUN = """
import sys
from pathlib import Path
import embedkit
from embedkit.ingestion import ingest
from embedkit.sinks.edge import EdgeSink
corpus, store, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
copies = range(4) if mode == "full" else range(2)  # "half": half the corpus gone, copy 1 edited
docs = [{"id": f"{copy}/{p.name}", "text": f"# {'Edited' if mode == 'half' and copy == 1 else 'Copy'} {copy}\\n\\n"
         + p.read_text(), "metadata": {"copy": copy}} for copy in copies for p in sorted(corpus.glob("*.md"))]
sink = EdgeSink("kb", path=store)
embedder = embedkit.load(device="cpu")
print("started", flush=True)
report = ingest(docs, embedder, sink, source="corpus", batch_tokens=512, delete_missing=mode == "half", progress=False)
print(report.summary(), flush=True)
sink.close()
"""


def _stored(store: Path) -> dict[str, tuple[dict, list[float]]]:
    with EdgeSink("kb", path=store) as sink:
        return snapshot(sink) if sink.exists() else {}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "half"])
def test_sigkilled_at_random_moments_then_rerun_equals_a_clean_run(
    tmp_path: Path, example_docs: Path, mode: str
) -> None:
    """SIGKILL during an ingest ("full") or during a delete_missing run over an edited, halved corpus ("half"),
    six times at random moments, then a run to the end: the shard equals a clean run's (the WAL replays)."""
    import os
    import random
    import signal
    import time

    script = tmp_path / "run.py"
    script.write_text(RANDOM_KILL_RUN)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def run(store: Path, run_mode: str) -> None:
        done = subprocess.run([sys.executable, str(script), str(example_docs), str(store), run_mode],
                              capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr

    clean, killed = tmp_path / "clean", tmp_path / "killed"
    run(clean, "full")
    if mode == "half":
        run(clean, "half")
        run(killed, "full")
    expected = _stored(clean)
    rng = random.Random(11)
    sizes = []
    for _ in range(6):
        child = subprocess.Popen([sys.executable, str(script), str(example_docs), str(killed), mode],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)  # fmt: skip
        assert child.stdout is not None and child.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0.0, 6.0))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        sizes.append(len(_stored(killed)))
    run(killed, mode)
    assert_same_collection(_stored(killed), expected)
    print(f"\npoints after each kill ({mode}): {sizes}; complete: {len(expected)}")
