"""Chunking throughput against embedding throughput on the same markdown, in one run; and the peak memory
of chunking one large document.

    python benchmarks/chunking.py --megabytes 10
    python benchmarks/chunking.py --memory 1 8

Builds a markdown corpus of the requested size from examples/docs (documents repeated with numbered
headings so no two are identical), chunks all of it with the default model's Chunker, then embeds a
sample of the chunks to measure the embedder's speed on the same text, and prints both rates and
how many times faster chunking is than embedding the same corpus would be.

`--memory MB ...` instead chunks ONE markdown document of each size (the corpus joined) in a fresh
subprocess and prints the split's peak RSS growth against the document's UTF-8 size: the peak is reset
just before the split (`/proc/self/clear_refs`, Linux) and read after it (VmHWM), so it counts the
tokenizer's native memory too, and neither loading the model nor building the text (ru_maxrss would count
both, and start from the parent's RSS at fork). The subprocess chunks with the default model's
`default_chunker`, as ingest does.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
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


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key + ":"))


def memory_child(megabytes: float) -> None:
    """Chunk one document of `megabytes` and print: bytes, chunks, seconds, peak RSS growth in KiB."""
    chunker = default_chunker(embedkit.load(device="cpu"))
    chunker.split(corpus(0.01)[0])  # warm-up: the tokenizer's first-call allocations are not the split's
    text = "\n\n".join(corpus(megabytes))
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # the peak (VmHWM) starts again from the RSS now
    start = time.perf_counter()
    chunks = chunker.split(text)
    seconds = time.perf_counter() - start
    print(len(text.encode()), len(chunks), f"{seconds:.2f}", _status_kib("VmHWM") - before)


def memory(sizes: list[float]) -> None:
    print("| document | chunks | seconds | peak RSS growth | x document size |")
    print("|---|---:|---:|---:|---:|")
    for megabytes in sizes:
        command = [sys.executable, __file__, "--memory-child", str(megabytes)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
        size, chunks, seconds, growth = int(out[0]), int(out[1]), float(out[2]), int(out[3]) * 1024
        print(f"| {size / 1e6:.2f} MB | {chunks} | {seconds:.1f} | {growth / 2**20:.0f} MiB | {growth / size:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=10.0)
    parser.add_argument("--embed-sample", type=int, default=256, help="chunks embedded to time the model")
    parser.add_argument("--memory", type=float, nargs="+", metavar="MB", help="peak memory of one document each")
    parser.add_argument("--memory-child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        return memory_child(args.memory_child)
    if args.memory:
        return memory(args.memory)

    embedder = embedkit.load(device="cpu")
    chunker = default_chunker(embedder)
    docs = corpus(args.megabytes)
    megabytes = sum(len(doc.encode()) for doc in docs) / 1e6

    start = time.perf_counter()
    chunks = [chunk for doc in docs for chunk in chunker.split(doc)]
    chunk_seconds = time.perf_counter() - start

    sample = [chunk.embedding_text for chunk in chunks[: args.embed_sample]]  # what ingest embeds
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
