"""Ingestion: documents -> chunks -> vectors -> a sink, idempotent and safe to re-run after a crash.

    sources.py   Document, Unreadable and the loaders (folders, files, JSON lines), with stable doc ids
    records.py   what is stored and how it is recognised: point ids, THE payload and its field names,
                 fingerprints, content hashes, the completeness rule, who may write to a collection
    report.py    IngestReport and one run's bookkeeping (duplicates, bad docs, delete_missing)
    writer.py    the writer thread: upsert, delete surplus, set the hash, while the next batch embeds
    pipeline.py  ingest(): the single-process driver
    ray.py       ingest_ray(): the same run on Ray Data (extra `ray`)

`embedkit.ingest` is pipeline.ingest; this package is `embedkit.ingestion`.
"""

from __future__ import annotations

from embedkit.ingestion.pipeline import DEFAULT_BATCH_TOKENS, ingest
from embedkit.ingestion.ray import DEFAULT_BATCH_DOCS, ingest_ray
from embedkit.ingestion.records import (
    MULTIVECTOR_COMPARED,
    NAMESPACE,
    PROBE_AGREEMENT,
    PROBE_TEXTS,
    check_reader,
    chunk_payload,
    fingerprint,
    multivector_fingerprint,
    open_collection,
    point_id,
    probe_vectors,
)
from embedkit.ingestion.report import IngestReport
from embedkit.ingestion.sources import (
    DEFAULT_PATTERNS,
    Document,
    Unreadable,
    list_files,
    load_directory,
    load_jsonl,
    load_paths,
    source_of,
)

__all__ = [
    "DEFAULT_BATCH_DOCS",
    "DEFAULT_BATCH_TOKENS",
    "DEFAULT_PATTERNS",
    "MULTIVECTOR_COMPARED",
    "NAMESPACE",
    "PROBE_AGREEMENT",
    "PROBE_TEXTS",
    "Document",
    "IngestReport",
    "Unreadable",
    "check_reader",
    "chunk_payload",
    "fingerprint",
    "ingest",
    "ingest_ray",
    "list_files",
    "load_directory",
    "load_jsonl",
    "load_paths",
    "multivector_fingerprint",
    "open_collection",
    "point_id",
    "probe_vectors",
    "source_of",
]
