"""`ingest_ray(..., multivector=True)` on a local Ray cluster gives the single-process run's collection: the same
dense vectors, ColBERT multivectors and recorded head, and a rerun embeds nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import embedkit
from embedkit import InputError
from embedkit.ingestion import ingest, ingest_ray, load_directory
from embedkit.sinks.qdrant import QdrantSink

from ..integration.test_colbert_ingest import MARKDOWN, TEXTS
from ..models.test_bge_m3 import write_tiny_bge_m3

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def vectors(sink: QdrantSink) -> dict[str, tuple[dict, np.ndarray, np.ndarray]]:
    return {p.id: (p.payload, np.asarray(p.vector[""]), np.asarray(p.vector["colbert"])) for p in sink.points()}


@pytest.mark.slow  # four ingest_ray runs, each paying Ray's actor start-up: ~90 s on 2 busy cores
def test_ray_stores_the_single_process_multivectors(cluster, tmp_path: Path, minilm_dir: Path) -> None:
    m3_dir = write_tiny_bge_m3(tmp_path / "m3", minilm_dir, seed=5)
    corpus = tmp_path / "docs"
    corpus.mkdir()
    for i, text in enumerate(TEXTS):
        (corpus / f"d{i}.txt").write_text(text)
    (corpus / "hives.md").write_text(MARKDOWN)
    m3 = embedkit.load(m3_dir, device="cpu", backend="torch")
    with QdrantSink("kb", path=tmp_path / "ray") as through_ray, QdrantSink("kb", path=tmp_path / "one") as single:
        report = ingest_ray(corpus, through_ray, model=m3_dir, progress=False, multivector=True)
        reference = ingest(load_directory(corpus), m3, single, progress=False, multivector=True)
        assert report.embedded == reference.embedded == 6 and report.chunks == reference.chunks
        assert through_ray.multivector_encoder()["head_digest"] == single.multivector_encoder()["head_digest"]
        ours, theirs = vectors(through_ray), vectors(single)
        assert ours.keys() == theirs.keys()
        for key, (payload, dense, rows) in theirs.items():
            assert ours[key][0] == payload
            np.testing.assert_allclose(ours[key][1], dense, atol=1e-6)
            np.testing.assert_allclose(ours[key][2], rows, atol=1e-6)
        again = ingest_ray(corpus, through_ray, model=m3_dir, progress=False, multivector=True)
        assert (again.unchanged, again.embedded, again.chunks) == (6, 0, 0)
        # the single-process run's collection is complete to Ray too: the same content hashes
        assert ingest_ray(corpus, single, model=m3_dir, progress=False, multivector=True).embedded == 0

    with QdrantSink("kb", path=tmp_path / "minilm") as sink:
        with pytest.raises(InputError, match="needs an embedder with a ColBERT head"):
            ingest_ray(corpus, sink, progress=False, multivector=True)  # the default model: all-MiniLM-L6-v2
        assert not sink.exists()
