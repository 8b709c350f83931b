"""What the ingest pipeline costs on top of raw embedding, on the same texts, in one run.

    python benchmarks/ingest.py --copies 10

Builds a corpus from examples/docs (`--copies` renamed copies), chunks it once with the default
chunker, then times (1) `embedder.embed` over exactly those chunk texts in the same token-budget
batches ingest uses, and (2) `embedkit.ingest` of the documents into a fresh embedded Qdrant store
(chunking, hashing, embedding, upserting overlapped on a writer thread, marking). Prints chunk tokens
per second for both and their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import embedkit
from embedkit.chunking import default_chunker
from embedkit.ingestion import DEFAULT_BATCH_TOKENS, Document, ingest
from embedkit.sinks import QdrantSink

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=10)
    args = parser.parse_args()

    embedder = embedkit.load(device="cpu")
    chunker = default_chunker(embedder)
    sources = sorted((ROOT / "examples" / "docs").glob("*.md"))
    docs = [
        Document(f"{copy}/{path.name}", f"# Copy {copy}\n\n{path.read_text()}")
        for copy in range(args.copies)
        for path in sources
    ]
    chunks = [chunk for doc in docs for chunk in chunker.split(doc.text)]
    tokens = sum(chunk.token_count for chunk in chunks)
    embedder.embed([chunk.text for chunk in chunks[:16]])  # warm-up

    start = time.perf_counter()
    batch: list[str] = []
    batch_tokens = 0
    for chunk in chunks:  # the same batching ingest uses: flush at DEFAULT_BATCH_TOKENS chunk tokens
        batch.append(chunk.text)
        batch_tokens += chunk.token_count
        if batch_tokens >= DEFAULT_BATCH_TOKENS:
            embedder.embed(batch)
            batch, batch_tokens = [], 0
    if batch:
        embedder.embed(batch)
    raw_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as store:
        sink = QdrantSink("bench", path=store)
        try:
            start = time.perf_counter()
            report = ingest(docs, embedder, sink, chunker, progress=False)
            ingest_seconds = time.perf_counter() - start
        finally:
            sink.close()
    assert report.chunks == len(chunks) and report.tokens == tokens

    print(f"corpus: {len(docs)} docs -> {len(chunks)} chunks, {tokens} chunk tokens ({chunker.settings})")
    print(f"raw embedding:  {raw_seconds:7.1f} s  {tokens / raw_seconds:8.0f} tokens/s")
    print(f"embedkit.ingest:{ingest_seconds:7.1f} s  {tokens / ingest_seconds:8.0f} tokens/s  ({report.summary()})")
    print(f"ingest / raw embedding: {raw_seconds / ingest_seconds:.1%} of the raw throughput")


if __name__ == "__main__":
    main()
