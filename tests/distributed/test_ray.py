"""Scale-out ingestion on a local Ray cluster gives exactly the single-process pipeline's collection.

One local cluster (ray.init with this machine's CPUs) serves the module; each ingest_ray run starts
its own actors, so every run here pays Ray's start-up (about 15 s on 2 cores).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedkit import InputError, MissingDependencyError, ModelLoadError
from embedkit.ingestion import ingest, ingest_ray, load_directory, load_jsonl
from embedkit.sinks.qdrant import QdrantSink
from tests.conftest import EXAMPLE_DOCS

ray = pytest.importorskip("ray")

REPORTED = ("docs", "embedded", "unchanged", "chunks", "deleted", "deleted_docs", "tokens")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def points(sink: QdrantSink) -> dict[str, tuple[np.ndarray, dict]]:
    return {p.id: (np.asarray(p.vector, dtype=np.float32), p.payload) for p in sink.points()}


def assert_same_points(ours: QdrantSink, reference: QdrantSink) -> None:
    a, b = points(ours), points(reference)
    assert a.keys() == b.keys()
    for point_id in a:
        assert a[point_id][1] == b[point_id][1], point_id
        # bit-identical: these corpora embed in one batch on both sides. Where the batches group other
        # chunks together (larger corpora) vectors differ by float32 rounding, <= 1.1e-7 measured,
        # exactly as two single-process runs with different batch_tokens do (benchmarks/ray_ingest.py)
        np.testing.assert_array_equal(a[point_id][0], b[point_id][0], err_msg=point_id)


def assert_same_report(ours, reference) -> None:
    assert {k: getattr(ours, k) for k in REPORTED} == {k: getattr(reference, k) for k in REPORTED}
    assert sorted(doc_id for doc_id, _ in ours.skipped) == sorted(doc_id for doc_id, _ in reference.skipped)


def test_example_corpus_gives_the_single_process_points_and_a_rerun_embeds_nothing(cluster, minilm):
    through_ray = QdrantSink("docs", location=":memory:")
    single = QdrantSink("docs", location=":memory:")
    report = ingest_ray(EXAMPLE_DOCS, through_ray, progress=False)
    reference = ingest(load_directory(EXAMPLE_DOCS), minilm, single, progress=False)

    assert report.embedded == 20 and report.chunks > 20
    assert_same_report(report, reference)
    assert_same_points(through_ray, single)
    assert through_ray.recorded_fingerprint() == single.recorded_fingerprint()

    again = ingest_ray(EXAMPLE_DOCS, through_ray, progress=False)
    assert (again.docs, again.unchanged, again.embedded, again.chunks, again.tokens) == (20, 20, 0, 0, 0)
    # complete docs are known before chunking: the prepare actors chunked nothing
    assert (report.chunked, again.chunked) == (20, 0)
    assert_same_points(through_ray, single)


def write_corpus(root: Path, *, changed: bool) -> list[Path]:
    """Markdown files plus a .jsonl with a bad line, an empty text, a number for text and a repeated id."""
    docs = root / "docs"
    shutil.copytree(EXAMPLE_DOCS, docs, dirs_exist_ok=True)
    (docs / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    lines = [
        {"id": "faq-1", "text": "Refunds take five business days.", "metadata": {"lang": "en", "n": 1}},
        {"id": "faq-2", "text": "Ship worldwide except to Antarctica.", "topic": "shipping"},
        {"id": "faq-3", "text": "   "},
        {"id": "faq-4", "text": 42},
        {"id": "faq-1", "text": "A repeated id."},
    ]
    if changed:
        (docs / "volcanoes.md").write_text("# Volcanoes\n\nShort now: lava is molten rock.\n", encoding="utf-8")
        (docs / "composting.md").unlink()
        lines[1]["text"] = "We ship worldwide, Antarctica included."
    jsonl = root / "faq.jsonl"
    jsonl.write_text(
        "\n".join([json.dumps(line) for line in lines[:2]] + ["{not json"] + [json.dumps(x) for x in lines[2:]]) + "\n",
        encoding="utf-8",
    )
    return [docs, jsonl]


def single_process(paths: list[Path], embedder, sink, **options):
    from itertools import chain

    docs = chain.from_iterable(load_jsonl(p) if p.suffix == ".jsonl" else load_directory(p) for p in paths)
    return ingest(docs, embedder, sink, progress=False, **options)


def test_changes_removals_and_bad_documents_match_the_single_process_run(cluster, minilm, tmp_path):
    through_ray = QdrantSink("mixed", location=":memory:")
    single = QdrantSink("mixed", location=":memory:")
    first = write_corpus(tmp_path, changed=False)
    for sink in (through_ray, single):
        single_process(first, minilm, sink, on_error="skip")

    second = write_corpus(tmp_path, changed=True)  # the same paths, edited: the same sources
    report = ingest_ray(second, through_ray, on_error="skip", delete_missing=True, progress=False)
    reference = single_process(second, minilm, single, on_error="skip", delete_missing=True)

    # volcanoes.md and faq-2 changed, composting.md removed; the rest unchanged
    assert (report.embedded, report.deleted_docs) == (2, 1) and report.unchanged == 19
    # only the changed docs were chunked; Ray also chunks the repeated faq-1 before the driver refuses it
    assert (report.chunked, reference.chunked) == (3, 2)
    assert report.deleted > 0  # volcanoes.md lost chunks
    assert_same_report(report, reference)
    reasons = dict(report.skipped)  # named by where each was read, as in the single-process run
    assert "not UTF-8" in reasons[str(second[0] / "latin1.txt")]
    assert "not a JSON line" in reasons[f"{second[1]}:3"]
    assert "empty" in reasons[f"{second[1]}:4"] and "int" in reasons[f"{second[1]}:5"]
    assert "already read" in reasons[f"{second[1]}:6"]
    assert_same_points(through_ray, single)


def test_a_folder_with_jsonl_records_surrogates_and_empty_files_matches_the_single_process_run(
    cluster, minilm, tmp_path
):
    folder = tmp_path / "corpus"
    shutil.copytree(EXAMPLE_DOCS, folder / "docs")
    (folder / "docs" / "empty.md").write_text("")
    (folder / "docs" / ".hidden.md").write_text("Not read unless asked.")
    (folder / "export.jsonl").write_text(
        '{"id": "a", "text": "Tides follow the moon.", "metadata": {"lang": "en"}}\n'
        '{"id": "b", "text": "A truncated emoji \\ud83d here."}\n'
        '{"id": "c", "text": "Glaciers carve valleys."}\n'
    )
    patterns = ("*.md", "*.jsonl")
    through_ray = QdrantSink("folder", location=":memory:")
    single = QdrantSink("folder", location=":memory:")
    report = ingest_ray(folder, through_ray, patterns=patterns, on_error="skip", progress=False)
    reference = ingest(load_directory(folder, patterns), minilm, single, on_error="skip", progress=False)
    assert report.embedded == 22 and len(report.skipped) == 2  # 20 docs + records a and c; b and empty.md skipped
    reasons = dict(report.skipped)
    assert "cannot be encoded as UTF-8" in reasons[f"{folder / 'export.jsonl'}:2"]
    assert "empty file" in reasons[str(folder / "docs" / "empty.md")]
    assert_same_report(report, reference)
    assert_same_points(through_ray, single)
    ids = {payload["doc_id"] for _, payload in points(through_ray).values()}
    assert f"{folder.as_posix()}/export.jsonl/a" in ids and not any(".hidden" in i for i in ids)


def test_a_ray_dataset_source_with_metadata_as_json(cluster, minilm):
    rows = [
        {"id": f"note-{i}", "text": f"Note {i}: " + "tides follow the moon. " * (i + 1), "metadata": {"i": i}}
        for i in range(1, 7)
    ]
    rows[2]["metadata"] = {"i": 3, "tags": ["sea", "moon"]}  # keys other rows lack stay absent
    dataset = ray.data.from_items([{**row, "metadata": json.dumps(row["metadata"])} for row in rows])
    through_ray = QdrantSink("notes", location=":memory:")
    single = QdrantSink("notes", location=":memory:")
    report = ingest_ray(dataset, through_ray, progress=False)
    reference = ingest(rows, minilm, single, progress=False)
    assert_same_report(report, reference)
    assert_same_points(through_ray, single)


def test_parquet_files_with_struct_metadata(cluster, minilm, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"id": f"p{i}", "text": f"Paragraph {i}. " + "Glaciers carve valleys slowly. " * i, "metadata": {"part": i}}
        for i in range(1, 9)
    ]
    for half, part in enumerate((rows[:4], rows[4:])):  # two files: two read tasks
        pq.write_table(pa.Table.from_pylist(part), tmp_path / f"part-{half}.parquet")
    through_ray = QdrantSink("parquet", location=":memory:")
    single = QdrantSink("parquet", location=":memory:")
    report = ingest_ray(sorted(tmp_path.glob("*.parquet")), through_ray, source_name="parts", progress=False)
    reference = ingest(rows, minilm, single, source="parts", progress=False)
    assert report.embedded == 8
    assert_same_report(report, reference)
    assert_same_points(through_ray, single)


def test_a_bad_document_stops_the_run_naming_it(cluster):
    dataset = ray.data.from_items([{"id": "fine", "text": "Some text."}, {"id": "blank", "text": " "}])
    sink = QdrantSink("stops", location=":memory:")
    with pytest.raises(InputError, match=r"dataset \(id 'blank'\) is empty") as caught:
        ingest_ray(dataset, sink, progress=False, batch_docs=1)
    assert caught.value.report.docs == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on_error": "ignore"}, "on_error"),
        ({"num_gpus": -1}, "num_gpus"),
        ({"num_actors": 0}, "num_actors"),
        ({"batch_docs": 0}, "batch_docs"),
        ({"num_gpus": 1, "num_actors": 2}, "not both"),
    ],
)
def test_bad_options_are_refused_before_any_work(options, message):
    with pytest.raises(InputError, match=message):
        ingest_ray(EXAMPLE_DOCS, QdrantSink("x", location=":memory:"), **options)


def test_a_model_that_cannot_load_raises_its_own_error_not_rays(cluster, tmp_path):
    sink = QdrantSink("x", location=":memory:")
    with pytest.raises(ModelLoadError, match="no such model directory"):
        ingest_ray(EXAMPLE_DOCS, sink, model=tmp_path / "absent", progress=False)
    assert not sink.exists()  # nothing created before the model was known


def test_a_missing_path_is_named(cluster, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        ingest_ray([tmp_path / "absent"], QdrantSink("x", location=":memory:"), progress=False)


def test_without_ray_installed_the_error_says_what_to_install():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from embedkit.ingestion import ingest_ray\n"
        "from embedkit.sinks.qdrant import QdrantSink\n"
        "ingest_ray('x', QdrantSink('x', location=':memory:'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert MissingDependencyError.__name__ in result.stderr and "embedkit[ray]" in result.stderr


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("embedkit", path=str(Path(sys.executable).parent))
    assert exe, f"the embedkit console script is installed beside {sys.executable}"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_engine_ray_then_local_finds_it_complete_and_search_works(tmp_path):
    # the command starts (and stops) its own local cluster: no cluster fixture here
    through_ray = run_cli(tmp_path, "ingest", str(EXAMPLE_DOCS), "--collection", "kb", "--quiet", "--engine", "ray")
    assert through_ray.returncode == 0, through_ray.stderr
    assert "20 docs (20 embedded, 0 unchanged, 0 skipped), 44 chunks upserted" in through_ray.stdout
    # --quiet: no Ray Data notices or worker logs (Ray's own core worker may still print its one line)
    assert "WARNING" not in through_ray.stderr and "Progress bars" not in through_ray.stderr, through_ray.stderr
    # the single-process engine agrees that everything is stored: same ids and content hashes
    local = run_cli(tmp_path, "ingest", str(EXAMPLE_DOCS), "--collection", "kb", "--quiet")
    assert local.returncode == 0, local.stderr
    assert "(0 embedded, 20 unchanged" in local.stdout and "44 points in the collection" in local.stdout
    found = run_cli(tmp_path, "search", "how do I reset my password", "--collection", "kb", "-k", "1")
    assert found.returncode == 0 and "password-reset.md" in found.stdout.splitlines()[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--num-gpus", "1"), "--num-gpus needs --engine ray"),
        (("--actors", "2"), "--actors needs --engine ray"),
        (("--engine", "ray", "--tei-url", "http://127.0.0.1:9"), "drop --tei-url"),
        (("--engine", "ray", "--num-gpus", "1", "--actors", "2"), "not both"),
    ],
)
def test_cli_engine_flags_are_checked(tmp_path, capsys, args, message):
    from embedkit.cli import main

    code = main(["ingest", str(EXAMPLE_DOCS), "--collection", "kb", "--qdrant-path", str(tmp_path / "q"), *args])
    assert code == 1 and message in capsys.readouterr().err


def test_sparse_vectors_through_ray_equal_the_single_process_ones(cluster, minilm):
    from embedkit.sparse import BM25Encoder

    through_ray = QdrantSink("docs", location=":memory:")
    single = QdrantSink("docs", location=":memory:")
    report = ingest_ray(EXAMPLE_DOCS, through_ray, progress=False, sparse=BM25Encoder())
    ingest(load_directory(EXAMPLE_DOCS), minilm, single, progress=False, sparse=BM25Encoder())
    ours = {p.id: p.vector for p in through_ray.points()}
    theirs = {p.id: p.vector for p in single.points()}
    assert report.embedded == 20 and ours.keys() == theirs.keys()
    for key, vectors in theirs.items():
        assert ours[key]["sparse"] == vectors["sparse"], key
        np.testing.assert_allclose(ours[key][""], vectors[""], atol=1e-6)
    assert through_ray.sparse_encoder() == BM25Encoder().fingerprint()
