"""Bulk-ingest a JSON-lines corpus into Qdrant with a local model or a TEI server.

    python examples/bulk_upsert.py corpus.jsonl --collection kb [--tei-url http://127.0.0.1:8080]
        [--qdrant-url http://localhost:6333 | --qdrant-path ./qdrant] [--chunk-tokens 256 --overlap 32]

Each line: {"id": "...", "text": "...", "metadata": {...}}. The file is read lazily, so its size does
not matter; run it again after editing the file and only the changed records are re-embedded. Without
a corpus it writes a demo one from examples/docs first (--demo).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import embedkit
from embedkit.chunking import default_chunker
from embedkit.ingestion import ingest, load_jsonl
from embedkit.sinks import QdrantSink


def write_demo(path: Path) -> None:
    docs = sorted((Path(__file__).parent / "docs").glob("*.md"))
    with path.open("w") as out:
        for doc in docs:
            record = {"id": doc.stem, "text": doc.read_text(), "metadata": {"source": doc.name}}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", default="demo.jsonl")
    parser.add_argument("--collection", default="kb")
    parser.add_argument("--tei-url", help="embed through a TEI-compatible server instead of a local model")
    parser.add_argument("--model", help="local model directory or hub id (default: all-MiniLM-L6-v2)")
    parser.add_argument("--qdrant-url", help="a Qdrant server; default is the embedded store at --qdrant-path")
    parser.add_argument("--qdrant-path", default="./qdrant")
    parser.add_argument("--chunk-tokens", type=int)
    parser.add_argument("--overlap", type=int)
    parser.add_argument("--demo", action="store_true", help="write a demo corpus from examples/docs first")
    args = parser.parse_args()

    corpus = Path(args.corpus)
    if args.demo or not corpus.exists():
        write_demo(corpus)
    embedder = embedkit.TEIClient(args.tei_url) if args.tei_url else embedkit.load(args.model)
    chunker = default_chunker(embedder, max_tokens=args.chunk_tokens, overlap_tokens=args.overlap)
    if args.qdrant_url:
        sink = QdrantSink(args.collection, url=args.qdrant_url, api_key=os.environ.get("QDRANT_API_KEY"))
    else:
        sink = QdrantSink(args.collection, path=args.qdrant_path)
    try:
        report = ingest(load_jsonl(corpus), embedder, sink, chunker, on_error="skip")
        print(report.table())
        for doc_id, reason in report.skipped:
            print(f"skipped {doc_id}: {reason}")
    finally:
        sink.close()


if __name__ == "__main__":
    main()
