"""Chunking throughput against embedding throughput on the same markdown, in one run.

    python benchmarks/chunking.py --megabytes 10

Builds a markdown corpus of the requested size from examples/docs (documents repeated with numbered
headings so no two are identical), chunks all of it with the default model's Chunker, then embeds a
sample of the chunks to measure the embedder's speed on the same text, and prints both rates and
how many times faster chunking is than embedding the same corpus would be.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import embedkit
from embedkit.chunking import default_chunker

ROOT = Path(__file__).resolve().parents[1]


def corpus(megabytes: float) -> list[str]:
    sources = [path.read_text() for path in sorted((ROOT / "examples" / "docs").glob("*.md"))]
    docs, size, copy = [], 0, 0
    while size < megabytes * 1e6:
        for text in sources:
            doc = f"# Copy {copy}\n\n{text}"
            docs.append(doc)
            size += len(doc.encode())
        copy += 1
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=10.0)
    parser.add_argument("--embed-sample", type=int, default=256, help="chunks embedded to time the model")
    args = parser.parse_args()

    embedder = embedkit.load(device="cpu")
    chunker = default_chunker(embedder)
    docs = corpus(args.megabytes)
    megabytes = sum(len(doc.encode()) for doc in docs) / 1e6

    start = time.perf_counter()
    chunks = [chunk for doc in docs for chunk in chunker.split(doc)]
    chunk_seconds = time.perf_counter() - start

    sample = [chunk.text for chunk in chunks[: args.embed_sample]]
    embedder.embed(sample[:8])  # warm-up
    start = time.perf_counter()
    embedder.embed(sample)
    embed_seconds = time.perf_counter() - start
    sample_megabytes = sum(len(text.encode()) for text in sample) / 1e6
    embed_rate = sample_megabytes / embed_seconds

    print(f"corpus: {len(docs)} markdown docs, {megabytes:.2f} MB -> {len(chunks)} chunks ({chunker.settings})")
    print(f"chunking:  {chunk_seconds:8.1f} s   {megabytes / chunk_seconds:8.3f} MB/s")
    print(f"embedding: {megabytes / embed_rate:8.1f} s   {embed_rate:8.3f} MB/s (estimated from {len(sample)} chunks)")
    ratio = (megabytes / chunk_seconds) / embed_rate
    print(f"chunking is {ratio:.0f}x faster than embedding the same text")


if __name__ == "__main__":
    main()
