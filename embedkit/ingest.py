"""docs -> chunks -> vectors -> sink, idempotent and safe to re-run after a crash.

Per document: chunk, hash (text + metadata + chunker settings + embedder fingerprint), and skip it
when the sink already holds exactly `chunk_count` points carrying that hash. Otherwise embed, then
write in three steps so a run killed at any moment and run again ends in the same collection:
upsert the chunks without a hash, delete the doc's surplus chunks, set the hash on its points.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from embedkit.chunking import Chunk, Chunker, default_chunker
from embedkit.embedder import Embedder
from embedkit.errors import InputError
from embedkit.sinks.base import Point, Sink

__all__ = ["Document", "Unreadable", "IngestReport", "ingest", "load_directory", "point_id", "fingerprint", "NAMESPACE"]

log = logging.getLogger(__name__)

NAMESPACE = uuid.UUID("4f8a1b7e-3c2d-5e6f-9a0b-1c2d3e4f5a6b")  # fixed: point ids never change
DEFAULT_PATTERNS = ("*.md", "*.txt")


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class IngestReport:
    docs: int = 0  # documents seen
    embedded: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (doc id or position, reason)
    chunks: int = 0  # chunks upserted
    deleted: int = 0  # stale chunks removed
    tokens: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.docs} docs ({self.embedded} embedded, {self.unchanged} unchanged, {len(self.skipped)} skipped), "
            f"{self.chunks} chunks upserted, {self.deleted} deleted, {self.tokens} tokens in {self.seconds:.1f}s"
        )


def point_id(doc_id: str, chunk_index: int) -> str:
    """The deterministic Qdrant point id of one chunk."""
    return str(uuid.uuid5(NAMESPACE, f"{doc_id}#{chunk_index}"))


def fingerprint(embedder: Embedder, *, task: str | None, dimensions: int | None, normalize: bool) -> dict[str, Any]:
    """What identifies the vectors an embedder gives with these settings."""
    return {
        "model_id": embedder.model_id,
        "weights_digest": getattr(embedder, "weights_digest", None),
        "dimension": dimensions or embedder.dimension,
        "task": task,
        "dimensions": dimensions,
        "normalize": normalize,
    }


def load_directory(root: str | Path, patterns: Iterable[str] = DEFAULT_PATTERNS) -> Iterator[Document | Unreadable]:
    """Text files under `root` matching `patterns`, id = path relative to root with '/'."""
    base = Path(root)
    if not base.exists():
        raise InputError(f"no such file or directory: {base}")
    if base.is_file():
        yield _read_file(base, base.name)
        return
    files = sorted({p for pattern in patterns for p in base.rglob(pattern) if p.is_file()})
    for path in files:
        yield _read_file(path, path.relative_to(base).as_posix())


@dataclass(frozen=True)
class Unreadable:
    """A source file that could not be read as text; ingest reports it as a bad document."""

    id: str
    reason: str


def _read_file(path: Path, doc_id: str) -> Document | Unreadable:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return Unreadable(doc_id, f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    except OSError as exc:
        return Unreadable(doc_id, f"{path}: cannot read ({exc.strerror})")
    return Document(doc_id, text, {"source": doc_id})


def _as_document(item: Any, position: int) -> Document:
    if isinstance(item, Unreadable):
        raise InputError(item.reason)
    if isinstance(item, Document):
        doc = item
    elif isinstance(item, str):
        doc = Document(hashlib.sha256(item.encode()).hexdigest(), item)
    elif isinstance(item, dict):
        if "id" not in item:
            raise InputError(f"docs[{position}] has no 'id' field")
        doc = Document(str(item["id"]), item.get("text"), dict(item.get("metadata") or {}))  # type: ignore[arg-type]
    else:
        raise InputError(f"docs[{position}] is {type(item).__name__}; expected Document, dict or str")
    if not isinstance(doc.text, str):
        raise InputError(f"docs[{position}] (id {doc.id!r}) text is {type(doc.text).__name__}, expected str")
    if not doc.text.strip():
        raise InputError(f"docs[{position}] (id {doc.id!r}) is empty")
    return doc


def _content_hash(doc: Document, settings: dict[str, Any], print_: dict[str, Any]) -> str:
    blob = json.dumps([doc.text, doc.metadata, settings, print_], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class _Pending:
    doc: Document
    chunks: list[Chunk]
    content_hash: str


def ingest(
    docs: Iterable[Document | Unreadable | dict[str, Any] | str],
    embedder: Embedder,
    sink: Sink,
    *,
    chunker: Chunker | None = None,
    task: str | None = "document",
    dimensions: int | None = None,
    normalize: bool = True,
    reembed: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
    batch_chunks: int = 64,
    progress: bool | None = None,
) -> IngestReport:
    """Embed `docs` into `sink`; re-running on an unchanged corpus embeds nothing.

    `docs` may be any iterable (a generator over millions is fine): Documents, dicts with `id`,
    `text` and optional `metadata`, or bare strings (id = sha256 of the text). Bad documents raise
    InputError, or with `on_error="skip"` are listed in the report's `skipped`.
    """
    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    started = time.perf_counter()
    chunker = chunker or default_chunker(embedder, task=task)
    print_ = fingerprint(embedder, task=task, dimensions=dimensions, normalize=normalize)
    sink.prepare(print_["dimension"], print_, reembed=reembed)
    report = IngestReport()
    seen: dict[str, int] = {}
    pending: list[_Pending] = []
    show = sys.stderr.isatty() if progress is None else progress

    def flush() -> None:
        if not pending:
            return
        texts = [chunk.text for item in pending for chunk in item.chunks]
        vectors = embedder.embed(texts, task=task, dimensions=dimensions, normalize=normalize)
        cursor = 0
        for item in pending:
            doc, count = item.doc, len(item.chunks)
            points = [
                Point(
                    point_id(doc.id, chunk.index),
                    vectors[cursor + chunk.index].tolist(),
                    {
                        "page_content": chunk.text,
                        "metadata": doc.metadata,
                        "doc_id": doc.id,
                        "chunk_index": chunk.index,
                        "chunk_count": count,
                        "start": chunk.start,
                        "end": chunk.end,
                        "headings": list(chunk.headings),
                    },
                )
                for chunk in item.chunks
            ]
            cursor += count
            sink.upsert(points)
            report.deleted += sink.delete_surplus(doc.id, count)
            sink.mark_complete(doc.id, item.content_hash)
            report.embedded += 1
            report.chunks += count
            report.tokens += sum(chunk.token_count for chunk in item.chunks)
        pending.clear()

    with tqdm(desc="ingest", unit="doc", disable=not show) as bar:
        for position, item in enumerate(docs):
            report.docs += 1
            bar.update(1)
            try:
                doc = _as_document(item, position)
                if doc.id in seen:
                    raise InputError(f"duplicate doc id {doc.id!r} at positions {seen[doc.id]} and {position}")
                seen[doc.id] = position
                chunks = chunker.split(doc.text)
            except InputError as exc:
                if on_error == "raise":
                    raise
                label = getattr(item, "id", None) or (item.get("id") if isinstance(item, dict) else None)
                report.skipped.append((str(label if label is not None else position), str(exc)))
                log.warning("skipped docs[%d]: %s", position, exc)
                continue
            digest = _content_hash(doc, chunker.settings, print_)
            if sink.count_complete(doc.id, digest) == len(chunks):
                report.unchanged += 1
                continue
            pending.append(_Pending(doc, chunks, digest))
            if sum(len(p.chunks) for p in pending) >= batch_chunks:
                flush()
        flush()
    report.seconds = time.perf_counter() - started
    return report
