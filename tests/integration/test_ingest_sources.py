"""Real corpora, real faults: doc identity across sources, delete_missing's limits, inputs JSON or UTF-8
cannot hold, empty and hidden files, byte-order marks and CRLF.

Each case is a fault a new user hit (the example) plus a variant. The CLI runs in-process through
`embedkit.cli.main` in a temporary working directory, so paths are "as given" as a user types them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from pathlib import Path

import numpy as np
import pytest

from embedkit.cli import main
from embedkit.errors import InputError
from embedkit.ingestion import Document, ingest, load_directory, load_jsonl, point_id
from embedkit.sinks import Point, QdrantSink


def points(store: Path, collection: str = "kb") -> list[dict]:
    with QdrantSink(collection, path=store) as sink:
        return [dict(p.payload, id=p.id) for p in sink.points(vectors=False)]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMBEDKIT_QDRANT_PATH", str(tmp_path / "qdrant"))
    return tmp_path


def cli(*args: str) -> int:
    return main([*args, "--collection", "kb", "--quiet"] if args[0] == "ingest" else list(args))


# -- doc identity --------------------------------------------------------------------------------


def test_same_file_name_in_two_folders_keeps_both(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(workdir / "notes/a/README.md", "# Alpha\n\nThe alpha team owns billing.")
    write(workdir / "notes/b/README.md", "# Beta\n\nThe beta team owns search.")
    assert cli("ingest", "notes/a") == 0 and cli("ingest", "notes/b") == 0
    stored = points(workdir / "qdrant")
    assert sorted(p["doc_id"] for p in stored) == ["notes/a/README.md", "notes/b/README.md"]
    assert {p["source"] for p in stored} == {"notes/a", "notes/b"}
    # a path written differently is the same source: "./notes/a/" re-reads notes/a, changing nothing
    assert cli("ingest", "./notes/a/") == 0 and "(0 embedded, 1 unchanged" in capsys.readouterr().out

    # variant: two FILE arguments with the same base name, in one run
    write(workdir / "x/guide.md", "Guide one: install the package.")
    write(workdir / "y/guide.md", "Guide two: configure the server.")
    assert cli("ingest", "x/guide.md", "y/guide.md") == 0
    ids = {p["doc_id"] for p in points(workdir / "qdrant")}
    assert {"x/guide.md", "y/guide.md"} <= ids


def test_a_named_source_keeps_ids_when_the_corpus_moves(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(workdir / "old/place/intro.md", "An introduction to tides and moons.")
    assert cli("ingest", "old/place", "--source", "handbook") == 0
    (workdir / "new").mkdir()
    (workdir / "old/place").rename(workdir / "new/home")
    assert cli("ingest", "new/home", "--source", "handbook", "--delete-missing") == 0
    out = capsys.readouterr().out
    assert "(0 embedded, 1 unchanged" in out and "removed" not in out
    assert [p["doc_id"] for p in points(workdir / "qdrant")] == ["handbook/intro.md"]


def test_two_folders_under_one_source_name_both_files_in_the_error(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(workdir / "a/README.md", "first")
    write(workdir / "b/README.md", "second")
    assert cli("ingest", "a", "b", "--source", "kb") == 1
    err = capsys.readouterr().err
    assert "b/README.md: doc id 'kb/README.md' was already read in this run" in err
    # with both folders as their own sources, the same run stores both
    assert cli("ingest", "a", "b") == 0
    assert sorted(p["doc_id"] for p in points(workdir / "qdrant")) == ["a/README.md", "b/README.md"]


def test_jsonl_ids_are_qualified_by_their_file(tmp_path: Path, minilm) -> None:
    one = write(tmp_path / "one.jsonl", json.dumps({"id": 1, "text": "Export one, record one."}) + "\n")
    two = write(tmp_path / "two.jsonl", json.dumps({"id": 1, "text": "Export two, record one."}) + "\n")
    with QdrantSink("kb", path=tmp_path / "q") as sink:
        report = ingest([*load_jsonl(one), *load_jsonl(two)], minilm, sink, progress=False)
        assert report.embedded == 2 and sink.count() == 2
    # dicts given to ingest() take the run's source; two systems' "7" stay apart
    with QdrantSink("dicts", location=":memory:") as sink:
        ingest([{"id": 7, "text": "CRM note"}], minilm, sink, source="crm", progress=False)
        ingest([{"id": 7, "text": "Wiki page"}], minilm, sink, source="wiki", progress=False)
        records = list(sink.points(vectors=False))
        assert sorted(r.payload["doc_id"] for r in records) == ["crm/7", "wiki/7"]


# -- delete_missing never deletes what it should not ------------------------------------------------


def test_a_glob_matching_nothing_deletes_nothing(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(workdir / "docs/a.md", "# A\n\nAlpha.")
    write(workdir / "docs/b.md", "# B\n\nBeta.")
    assert cli("ingest", "docs") == 0
    before = points(workdir / "qdrant")
    assert cli("ingest", "docs", "--glob", "*.MD", "--delete-missing") == 1
    err = capsys.readouterr().err
    assert "docs holds no files matching *.MD" in err and "nothing was deleted" in err and "Traceback" not in err
    assert points(workdir / "qdrant") == before
    # without --delete-missing it is a warning; forced, it empties the source
    assert cli("ingest", "docs", "--glob", "*.MD") == 0 and "warning" in capsys.readouterr().err
    assert cli("ingest", "docs", "--glob", "*.MD", "--delete-missing", "--force-delete") == 0
    assert points(workdir / "qdrant") == []


def test_an_empty_run_in_python_deletes_nothing_unless_forced(tmp_path: Path, minilm) -> None:
    with QdrantSink("kb", location=":memory:") as sink:
        ingest([{"id": "a", "text": "kept"}], minilm, sink, source="crm", progress=False)
        with pytest.raises(InputError, match=r"read no documents from source\(s\) 'crm'.*nothing was deleted"):
            ingest([], minilm, sink, sources=["crm"], delete_missing=True, progress=False)
        with pytest.raises(InputError, match="read no documents from the input"):
            ingest(iter(()), minilm, sink, delete_missing=True, progress=False)
        assert sink.count() == 1
        report = ingest([], minilm, sink, sources=["crm"], delete_missing=True, force_delete=True, progress=False)
        assert report.deleted_docs == 1 and sink.count() == 0


def test_a_skipped_file_is_never_deleted(workdir: Path, capsys: pytest.CaptureFixture[str], caplog) -> None:
    write(workdir / "docs/good.md", "Good text about rivers.")
    bad = write(workdir / "docs/latin1.txt", "Café au lait, crème brûlée.")
    assert cli("ingest", "docs") == 0
    bad.write_bytes("Café au lait, now saved as Latin-1.".encode("latin-1"))
    with caplog.at_level(logging.WARNING):
        assert cli("ingest", "docs", "--delete-missing", "--on-error", "skip") == 0
    assert "removed" not in capsys.readouterr().out and "docs/latin1.txt: not UTF-8 text" in caplog.text
    assert {p["doc_id"] for p in points(workdir / "qdrant")} == {"docs/good.md", "docs/latin1.txt"}


def test_a_jsonl_line_without_a_readable_id_guards_its_whole_source(tmp_path: Path, minilm) -> None:
    export = tmp_path / "export.jsonl"
    rows = [{"id": i, "text": f"Record {i} about tides."} for i in range(3)]
    export.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with QdrantSink("kb", location=":memory:") as sink:
        ingest(load_jsonl(export), minilm, sink, progress=False)
        # record 1's line is damaged: its id cannot be read, so nothing of this export may be deleted
        export.write_text(json.dumps(rows[0]) + "\n{broken\n" + json.dumps(rows[2]) + "\n")
        report = ingest(load_jsonl(export), minilm, sink, delete_missing=True, on_error="skip", progress=False)
        assert report.deleted_docs == 0 and sink.count() == 3 and len(report.skipped) == 1
        # a record whose id is readable but whose metadata is refused keeps its points as well
        export.write_text("".join(json.dumps(row) + "\n" for row in [rows[0], {**rows[1], "metadata": 5}, rows[2]]))
        report = ingest(load_jsonl(export), minilm, sink, delete_missing=True, on_error="skip", progress=False)
        assert report.deleted_docs == 0 and sink.count() == 3


def test_points_other_tools_wrote_are_left_alone(workdir: Path, minilm, capsys: pytest.CaptureFixture[str]) -> None:
    write(workdir / "docs/a.md", "Alpha text.")
    write(workdir / "docs/b.md", "Beta text.")
    assert cli("ingest", "docs") == 0
    with QdrantSink("kb", path=workdir / "qdrant") as sink:  # what langchain-qdrant's add_texts writes
        vector = minilm.embed(["Foreign text."])[0].tolist()
        foreign = [
            Point(str(uuid.UUID(int=i)), vector, {"page_content": "Foreign text.", "metadata": {"n": i}})
            for i in range(3)
        ]
        sink.upsert(foreign)
    (workdir / "docs/b.md").unlink()
    assert cli("ingest", "docs", "--delete-missing") == 0
    assert "1 removed" in capsys.readouterr().out
    stored = points(workdir / "qdrant")
    assert sorted(p.get("doc_id", "-") for p in stored) == ["-", "-", "-", "docs/a.md"]
    # variant: another source's docs are out of reach of this source's delete_missing
    write(workdir / "other/c.md", "Gamma text.")
    assert cli("ingest", "other") == 0
    (workdir / "docs/a.md").write_text("Alpha, edited.")
    assert cli("ingest", "docs", "--delete-missing") == 0
    assert sorted(p.get("doc_id", "-") for p in points(workdir / "qdrant")) == [
        "-",
        "-",
        "-",
        "docs/a.md",
        "other/c.md",
    ]


# -- what a folder holds ---------------------------------------------------------------------------


def test_jsonl_inside_a_folder_is_read_as_records(workdir: Path) -> None:
    rows = [{"id": "r1", "text": "Tides follow the moon.", "metadata": {"lang": "en"}}, {"id": "r2", "text": "Ebbe."}]
    write(workdir / "corpus/export.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    write(workdir / "corpus/notes.md", "Notes on tides.")
    assert cli("ingest", "corpus", "--glob", "*.jsonl", "--glob", "*.md") == 0
    stored = {p["doc_id"]: p for p in points(workdir / "qdrant")}
    assert set(stored) == {"corpus/export.jsonl/r1", "corpus/export.jsonl/r2", "corpus/notes.md"}
    assert stored["corpus/export.jsonl/r1"]["page_content"] == "Tides follow the moon."
    assert stored["corpus/export.jsonl/r1"]["metadata"] == {"lang": "en"}


def test_empty_and_hidden_files(workdir: Path, capsys: pytest.CaptureFixture[str], caplog) -> None:
    write(workdir / "docs/a.md", "Alpha text.")
    write(workdir / "docs/empty.md", "")
    write(workdir / "docs/blank.txt", "  \n\n")
    write(workdir / "docs/.draft.md", "A hidden draft.")
    write(workdir / "docs/.git/HEAD.md", "ref: refs/heads/main")
    with caplog.at_level(logging.WARNING):
        assert cli("ingest", "docs") == 0  # on_error=raise, yet empty files do not stop the folder
    assert "docs/empty.md: empty file" in caplog.text and "docs/blank.txt: empty file" in caplog.text
    assert [p["doc_id"] for p in points(workdir / "qdrant")] == ["docs/a.md"]
    assert cli("ingest", "docs", "--include-hidden") == 0
    assert {p["doc_id"] for p in points(workdir / "qdrant")} == {"docs/a.md", "docs/.draft.md", "docs/.git/HEAD.md"}
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli("ingest", "docs", "--chunk-tokens", "0")
    assert "--chunk-tokens: must be at least 1, got 0" in capsys.readouterr().err


def test_bom_and_crlf_spans_index_the_file_as_stored(tmp_path: Path, minilm) -> None:
    raw = "\ufeff# Title\r\n\r\nFirst paragraph about tides.\r\n\r\n## Part\r\n\r\nSecond paragraph.\r\n"
    path = write(tmp_path / "docs/crlf.md", raw.encode("utf-8"))
    with QdrantSink("kb", location=":memory:") as sink:
        ingest(load_directory(tmp_path / "docs"), minilm, sink, progress=False)
        records = list(sink.points(vectors=False))
    as_stored = path.read_bytes().decode("utf-8")  # BOM kept, line endings as stored
    assert records
    for record in records:
        payload = record.payload
        assert "\ufeff" not in payload["page_content"]
        assert as_stored[payload["start"] : payload["end"]] == payload["page_content"]
    assert any("\r\n" in r.payload["page_content"] for r in records)


# -- inputs JSON or UTF-8 cannot hold -----------------------------------------------------------------


def test_lone_surrogates_name_the_record_and_skip_keeps_the_rest(tmp_path: Path, minilm) -> None:
    export = tmp_path / "export.jsonl"
    export.write_text(
        '{"id": "a", "text": "Fine text."}\n'
        '{"id": "b", "text": "A truncated emoji \\ud83d here."}\n'
        '{"id": "c", "text": "Also fine.", "metadata": {"note": "bad \\udc00 note"}}\n'
        '{"id": "d", "text": "Fine again."}\n'
    )
    with QdrantSink("kb", location=":memory:") as sink:
        with pytest.raises(InputError, match=r"export.jsonl:2: the text cannot be encoded as UTF-8.*at character 18"):
            ingest(load_jsonl(export), minilm, sink, progress=False)
        report = ingest(load_jsonl(export), minilm, sink, on_error="skip", progress=False)
        assert report.embedded == 2 and [where for where, _ in report.skipped] == [f"{export}:2", f"{export}:3"]
        assert "metadata['note']" in report.skipped[1][1]
        assert sink.count() == 2


def test_metadata_json_cannot_hold_is_converted_or_refused(tmp_path: Path, minilm) -> None:
    when = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc)
    docs = [
        Document("a", "Alpha.", {"n": np.int64(3), "w": np.float32(0.5), "ok": np.bool_(True), "at": when}),
        Document("b", "Beta.", {"tags": {"x", "y"}}),
        Document("c", "Gamma.", {"day": dt.date(2024, 5, 2), "nested": [{"k": (1, 2)}]}),
        Document("d", "Delta.", {"score": float("nan")}),
        Document("e", "Epsilon.", {"raw": b"\x00\x01"}),
    ]
    with QdrantSink("kb", location=":memory:") as sink:
        with pytest.raises(InputError, match=r"docs\[1\]: metadata\['tags'\] is a set.*convert it to a list"):
            ingest(docs, minilm, sink, progress=False)
        assert sink.count() == 0  # refused before a neighbour's batch was embedded or written
        report = ingest(docs, minilm, sink, on_error="skip", progress=False)
        assert report.embedded == 2 and len(report.skipped) == 3
        reasons = " ".join(reason for _, reason in report.skipped)
        assert "metadata['score'] is nan" in reasons and "metadata['raw'] is a bytes" in reasons
        stored = {r.payload["doc_id"]: r.payload["metadata"] for r in sink.points(vectors=False)}
    assert stored["a"] == {"n": 3, "w": 0.5, "ok": True, "at": "2024-05-01T12:30:00+00:00"}
    assert stored["c"] == {"day": "2024-05-02", "nested": [{"k": [1, 2]}]}
    assert point_id("a", 0)  # ids of dict/Document docs given without a source stay as given


def test_search_refuses_weights_that_changed_under_the_recorded_name(
    workdir: Path, tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from tests.conftest import write_tiny_bert

    model = workdir / "model"
    shutil.copytree(tiny_bert_dir, model)
    write(workdir / "docs/a.md", "Tides follow the moon.")
    assert cli("ingest", "docs", "--model", str(model)) == 0
    assert main(["search", "tides", "--collection", "kb"]) == 0 and "docs/a.md" in capsys.readouterr().out
    write_tiny_bert(model, tiny_bert_dir, seed=3)  # the same folder, retrained
    assert main(["search", "tides", "--collection", "kb"]) == 1
    err = capsys.readouterr().err
    assert "does not reproduce its vectors" in err and "Traceback" not in err


def test_search_into_a_closed_pipe_ends_quietly(workdir: Path) -> None:
    """`embedkit search ... | head -1`: the reader is gone before the results are written."""
    import shutil
    import subprocess
    import sys

    write(workdir / "docs/a.md", "Tides follow the moon.")
    assert cli("ingest", "docs") == 0
    exe = shutil.which("embedkit", path=str(Path(sys.executable).parent))
    assert exe
    child = subprocess.Popen([exe, "search", "tides", "--collection", "kb"], cwd=workdir,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # closed while the model is still loading: every write hits a broken pipe
    err = child.stderr.read()
    child.stderr.close()
    assert child.wait(timeout=300) == 141 and "Traceback" not in err and "Exception ignored" not in err, err


def test_a_collection_from_before_source_ids_is_refused_not_doubled(minilm) -> None:
    from embedkit.errors import StoreError
    from embedkit.ingestion import fingerprint

    with QdrantSink("kb", location=":memory:") as sink:
        earlier = fingerprint(minilm, task="document", dimensions=None, normalize=True)
        del earlier["id_scheme"]  # what embedkit wrote before doc ids carried their source
        sink.prepare(384, earlier)
        for reembed in (False, True):
            with pytest.raises(StoreError, match="earlier embedkit whose doc ids did not carry their source"):
                ingest([{"id": "a", "text": "Tides."}], minilm, sink, reembed=reembed, progress=False)
        assert sink.count() == 0
