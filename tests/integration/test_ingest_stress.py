"""Ingest under SIGKILL and over a long stream, each in a child process (slow). The kill tests write dense and
BM25 sparse vectors: a rerun after any kill must leave both exactly as a clean run does."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedkit.sinks import QdrantSink

INGEST = """
import sys
from pathlib import Path
import embedkit
from embedkit.ingestion import Document, ingest
from embedkit.sinks import QdrantSink
from embedkit.sparse import BM25Encoder
source, store = Path(sys.argv[1]), sys.argv[2]
docs = [Document(f"{copy}/{p.name}", f"# Copy {copy}\\n\\n" + p.read_text(), {"copy": copy})
        for copy in range(4) for p in sorted(source.glob("*.md"))]
sink = QdrantSink("kb", path=store)
embedder = embedkit.load(device="cpu")
print("started", flush=True)
import time
began = time.monotonic()
print(ingest(docs, embedder, sink, batch_tokens=512, progress=False, sparse=BM25Encoder()).summary(), flush=True)
print(f"took {time.monotonic() - began:.3f}", flush=True)
sink.close()
"""

STREAM = """
import json, sys, resource
import psutil
import embedkit
from embedkit.ingestion import ingest

class NullSink:
    '''Keeps nothing, so what is measured is the pipeline's own memory.'''
    collection = "null"
    points = 0
    def exists(self): return True
    def count(self): return 0
    def close(self): pass
    def prepare(self, dimension, fingerprint, *, probes=None, rewrite=False): pass
    def recorded_fingerprint(self): return None
    def recorded_probes(self): return None
    def hashed_points(self, doc_ids=None): return iter(())
    def upsert(self, points): self.points += len(points)
    def delete_surplus(self, doc_id, keep): return 0
    def mark_complete(self, doc_id, content_hash): pass
    def delete_missing(self, sources, keep): return (0, 0)
    def optimize(self): return False
    def search(self, vector, k, *, metadata_filter=None, score_threshold=None): return []

class Counted:
    '''The embedded Qdrant Edge store, counting what it was given.'''
    def __init__(self, path):
        from embedkit.sinks import QdrantSink
        self.sink = QdrantSink("kb", path=path)
        self.points = 0
    def __getattr__(self, name): return getattr(self.sink, name)
    def upsert(self, points):
        self.points += len(points)
        self.sink.upsert(points)

count, model, store = int(sys.argv[1]), sys.argv[2], sys.argv[3]
process, marks = psutil.Process(), {}
def docs():
    for i in range(count):
        if i % (count // 8) == 0:
            marks[i] = process.memory_info().rss / 2**20
        yield {"id": f"doc-{i}", "text": f"Document {i} is a short note about item {i % 977}.", "metadata": {"n": i}}
sink = NullSink() if store == "null" else Counted(store)
embedder = embedkit.load(model, device="cpu")
report = ingest(docs(), embedder, sink, progress=False)
marks[count] = process.memory_info().rss / 2**20
found = sink.search(embedder.embed_query("a short note about item 5"), 3, metadata_filter={"n": 5})
print(json.dumps({"marks": marks, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "points": sink.points, "stored": sink.count(), "found": [h.payload["doc_id"] for h in found],
                  "indexing": report.index_seconds, "summary": report.summary()}))
"""


def assert_same_points(got: dict, expected: dict) -> None:
    """Same ids and payloads, dense vectors equal to float rounding, sparse vectors (when stored) equal."""
    assert got.keys() == expected.keys()
    for key, (payload, vector) in expected.items():
        assert got[key][0] == payload, key
        dense, sparse = (vector[""], vector["sparse"]) if isinstance(vector, dict) else (vector, None)
        theirs = got[key][1]
        np.testing.assert_allclose(theirs[""] if isinstance(theirs, dict) else theirs, dense, atol=1e-6)
        assert (theirs.get("sparse") if isinstance(theirs, dict) else None) == sparse, key


def snapshot(path: Path) -> dict[str, tuple[dict, list[float]]]:
    sink = QdrantSink("kb", path=path)
    try:
        if not sink.exists():  # killed before it was created
            return {}
        points = list(sink.points())
    finally:
        sink.close()
    return {str(p.id): (p.payload, p.vector) for p in points}


@pytest.mark.slow
def test_killed_at_random_moments_then_rerun_equals_a_clean_run(tmp_path: Path, example_docs: Path) -> None:
    script = tmp_path / "ingest.py"
    script.write_text(INGEST)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def run(store: Path) -> str:
        done = subprocess.run([sys.executable, str(script), str(example_docs), str(store)], capture_output=True,
                              text=True, timeout=600, env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    clean_store, killed_store = tmp_path / "clean", tmp_path / "killed"
    # kills land within the clean run's own duration after the model loaded, so they fall mid-run on any machine
    duration = float(run(clean_store).split("took ")[-1])
    expected = snapshot(clean_store)
    rng = random.Random(7)
    partial_sizes = []
    for _ in range(6):
        child = subprocess.Popen([sys.executable, str(script), str(example_docs), str(killed_store)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)  # fmt: skip
        assert child.stdout is not None and child.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0.05, 0.95) * duration)  # somewhere in the run: embedding, upserting, marking
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        partial_sizes.append(len(snapshot(killed_store)))
    final = run(killed_store)
    assert "80 docs" in final
    assert_same_points(snapshot(killed_store), expected)
    print(f"\npoints after each kill: {partial_sizes}; complete: {len(expected)}")
    assert any(0 < size < len(expected) for size in partial_sizes)  # at least one kill landed mid-run


@pytest.mark.slow
@pytest.mark.parametrize("store", ["null"])
def test_a_long_stream_keeps_memory_flat(tmp_path: Path, tiny_bert_dir: Path, store: str) -> None:
    """200k small docs through chunking, embedding (a tiny model: the pipeline is measured, not the model)
    and the writer, into a sink that keeps nothing: the pipeline's own memory; RSS after the first eighth
    vs the end. ("edge" runs the same into the embedded Qdrant Edge store and checks it ends searchable; it
    is not in the suite: Edge's payload indexes grow about 1.1 KB of anonymous memory per point, measured by
    benchmarks/store.py --ingest-chunks, so its RSS is not flat, and the run takes too long for the suite.)"""
    script = tmp_path / "stream.py"
    script.write_text(STREAM)
    where = "null" if store == "null" else str(tmp_path / "qdrant")
    done = subprocess.run([sys.executable, str(script), "200000", str(tiny_bert_dir), where], capture_output=True,
                          text=True, timeout=1500)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    marks = {int(k): v for k, v in result["marks"].items()}
    assert result["points"] == 200_000
    growth = marks[200_000] - marks[25_000]
    print(f"\nRSS MiB by docs seen: { {k: round(v) for k, v in sorted(marks.items())} }; peak {result['peak']:.0f}")
    print(result["summary"], f"; index built in {result['indexing']:.1f} s")
    if store == "edge":
        assert result["stored"] == 200_000 and result["found"] == ["doc-5"]
    # what remains is the duplicate-id set: 8-byte digests, well under 100 bytes per doc; the store keeps its
    # points in segments on disk (the kernel may page them out); 200k x 32-d vectors are 25 MB as floats
    assert growth < (30 if store == "null" else 60), marks


@pytest.mark.slow
def test_killed_during_a_delete_missing_run_then_rerun_equals_a_clean_run(tmp_path: Path, example_docs: Path) -> None:
    """`embedkit ingest --delete-missing` after half the corpus was removed and some of it edited, SIGKILLed
    at random moments (reading, embedding, writing, deleting), then run to the end: the collection equals
    the one an uninterrupted run leaves."""
    import shutil

    exe = shutil.which("embedkit", path=str(Path(sys.executable).parent))
    assert exe, f"the embedkit console script is installed beside {sys.executable}"
    corpus = tmp_path / "corpus"

    def write(version: int) -> None:
        shutil.rmtree(corpus, ignore_errors=True)
        for copy in range(4):
            for path in sorted(example_docs.glob("*.md")):
                if version == 2 and (copy + len(path.name)) % 2:  # v2: about half of the files are gone
                    continue
                edit = f"\n\nEdited in v2, copy {copy}." if version == 2 and copy == 0 else ""
                target = corpus / f"copy-{copy}" / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(path.read_text() + edit)

    def command(store: Path, *extra: str) -> list[str]:
        where = ["--qdrant-path", str(store), "--sparse", "bm25"]
        return [exe, "ingest", "corpus", "--collection", "kb", "--quiet", *where, *extra]

    def run(store: Path, *extra: str) -> float:
        started = time.monotonic()
        done = subprocess.run(command(store, *extra), cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return time.monotonic() - started

    clean, killed = tmp_path / "clean", tmp_path / "killed"
    write(1)
    run(clean)
    run(killed)
    write(2)
    duration = run(clean, "--delete-missing")
    expected = snapshot(clean)
    rng = random.Random(11)
    sizes = []
    for _ in range(5):
        child = subprocess.Popen(command(killed, "--delete-missing"), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(rng.uniform(0.3, 1.0) * duration)
        child.send_signal(signal.SIGKILL)
        child.wait()
        sizes.append(len(snapshot(killed)))
    run(killed, "--delete-missing")
    print(f"\npoints after each kill: {sizes}; clean run {duration:.1f} s, {len(expected)} points")
    assert_same_points(snapshot(killed), expected)
