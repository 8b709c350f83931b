"""Ray Data ingestion against the single-process pipeline on the same machine, in one run.

    python benchmarks/ray_ingest.py --copies 10 [--num-gpus N]

Writes `--copies` renamed copies of examples/docs as files, starts a local Ray cluster with this
machine's CPUs, then ingests the files into fresh embedded Qdrant stores: (1) embedkit.ingest in this
process, (2) ingest_ray with one CPU actor using every core, (3) the same again on the now complete
collection (what a re-run costs: Ray start-up, reading, hashing; nothing embedded), (4) ingest_ray
with one single-threaded actor per core, and with `--num-gpus N` (5) N GPU actors. Checks that every
run stores the same point ids and payloads and reports how far apart the vectors are, then prints
seconds, chunk tokens per second, per-actor throughput and the ratio to the single-process run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import embedkit
from embedkit.ingestion import ingest, load_directory
from embedkit.sinks import QdrantSink

ROOT = Path(__file__).resolve().parents[1]


def write_corpus(target: Path, copies: int) -> None:
    for copy in range(copies):
        folder = target / f"copy-{copy:03d}"
        folder.mkdir(parents=True)
        for path in sorted((ROOT / "examples" / "docs").glob("*.md")):
            (folder / path.name).write_text(f"# Copy {copy}\n\n{path.read_text()}", encoding="utf-8")


def stored(sink: QdrantSink) -> dict[str, tuple[np.ndarray, dict]]:
    return {point.id: (np.asarray(point.vector, np.float32), point.payload) for point in sink.points()}


def vector_difference(ours: dict, expected: dict, what: str) -> float:
    """Ids and payloads must match exactly; returns the largest vector difference (batch composition)."""
    assert ours.keys() == expected.keys(), f"{what} stored other point ids than the single process"
    assert all(ours[key][1] == expected[key][1] for key in ours), f"{what} stored other payloads"
    return max(float(np.abs(ours[key][0] - expected[key][0]).max()) for key in ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--num-gpus", type=int, default=0, help="also run ray with this many GPU actors")
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    import ray

    from embedkit.ingestion import ingest_ray

    with tempfile.TemporaryDirectory() as work:
        corpus = Path(work) / "corpus"
        write_corpus(corpus, args.copies)
        rows = []

        embedder = embedkit.load(device="cpu")
        embedder.embed(["warm-up"])
        single = QdrantSink("bench", path=f"{work}/single")
        start = time.perf_counter()
        reference = ingest(load_directory(corpus), embedder, single, progress=False)
        rows.append(("single process, torch, all cores", time.perf_counter() - start, reference, 1))
        expected = stored(single)
        single.close()

        start = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        cluster_start = time.perf_counter() - start

        one = QdrantSink("bench", path=f"{work}/ray-one")
        start = time.perf_counter()
        report = ingest_ray(corpus, one, num_actors=1, cpus_per_actor=cores, progress=False)
        rows.append((f"ray, 1 actor x {cores} threads", time.perf_counter() - start, report, 1))
        start = time.perf_counter()
        rerun = ingest_ray(corpus, one, num_actors=1, cpus_per_actor=cores, progress=False)
        rerun_seconds = time.perf_counter() - start
        assert rerun.embedded == 0 and rerun.unchanged == reference.docs
        differences = [vector_difference(stored(one), expected, "ray (1 actor)")]
        one.close()

        if cores > 1:
            many = QdrantSink("bench", path=f"{work}/ray-many")
            start = time.perf_counter()
            report = ingest_ray(corpus, many, num_actors=cores, cpus_per_actor=1, progress=False)
            rows.append((f"ray, {cores} actors x 1 thread", time.perf_counter() - start, report, cores))
            differences.append(vector_difference(stored(many), expected, "ray (one actor per core)"))
            many.close()
        if args.num_gpus:
            gpus = QdrantSink("bench", path=f"{work}/ray-gpu")
            start = time.perf_counter()
            report = ingest_ray(corpus, gpus, num_gpus=args.num_gpus, progress=False)
            rows.append((f"ray, {args.num_gpus} GPU actors", time.perf_counter() - start, report, args.num_gpus))
            differences.append(vector_difference(stored(gpus), expected, "ray (GPU actors)"))
            gpus.close()
        ray.shutdown()

    base = rows[0][1]
    print(
        f"{reference.docs} docs -> {reference.chunks} chunks, {reference.tokens} chunk tokens; {cores} CPUs; "
        "every run stored the same point ids and payloads (content hashes included); largest vector "
        f"difference {max(differences):.2e} (float32 rounding: Ray's batches group other chunks together)"
    )
    print(f"local Ray cluster start (ray.init): {cluster_start:.1f} s, not counted below")
    print(f"ray re-run on the complete collection (start-up, read, hash; 0 embedded): {rerun_seconds:.1f} s")
    print(f"\n| {'what':<34} | seconds | tokens/s | tokens/s per actor | x single process |")
    print(f"|{'-' * 36}|--------:|---------:|-------------------:|-----------------:|")
    for name, seconds, report, actors in rows:
        rate = report.tokens / seconds
        print(f"| {name:<34} | {seconds:7.1f} | {rate:8.0f} | {rate / actors:18.0f} | {base / seconds:15.2f}x |")
    for name, seconds, report, actors in rows[1:]:
        steady = report.tokens / max(seconds - rerun_seconds, 1e-9)
        print(
            f"{name}: without the fixed start-up ({rerun_seconds:.1f} s) {steady:.0f} tokens/s, "
            f"{steady / actors:.0f} per actor, {steady / (rows[0][2].tokens / base):.2f}x the single process's rate"
        )


if __name__ == "__main__":
    main()
