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
import queue
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from embedkit.chunking import Chunk, Chunker, default_chunker
from embedkit.embedder import Embedder
from embedkit.errors import InputError
from embedkit.memory import release_freed_memory
from embedkit.sinks.base import Point, Sink

__all__ = [
    "Document",
    "Unreadable",
    "IngestReport",
    "ingest",
    "load_directory",
    "load_jsonl",
    "point_id",
    "fingerprint",
    "NAMESPACE",
]

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
    deleted: int = 0  # stale chunks removed (surplus chunks of changed docs, and missing docs' chunks)
    deleted_docs: int = 0  # docs removed by delete_missing
    tokens: int = 0  # chunk tokens embedded
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"{self.docs} docs ({self.embedded} embedded, {self.unchanged} unchanged, {len(self.skipped)} skipped"
            f"{f', {self.deleted_docs} removed' if self.deleted_docs else ''}), "
            f"{self.chunks} chunks upserted, {self.deleted} deleted, {self.tokens} tokens in {self.seconds:.1f}s"
            f" ({self.tokens_per_second:.0f} tokens/s)"
        )

    def table(self) -> str:
        """The report as an aligned two-column table (the CLI's summary)."""
        rows = [
            ("documents seen", self.docs),
            ("embedded", self.embedded),
            ("unchanged (skipped)", self.unchanged),
            ("bad (skipped)", len(self.skipped)),
            ("removed (missing)", self.deleted_docs),
            ("chunks upserted", self.chunks),
            ("chunks deleted", self.deleted),
            ("tokens embedded", self.tokens),
            ("seconds", f"{self.seconds:.1f}"),
            ("tokens/s", f"{self.tokens_per_second:.0f}"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value:>10}" for name, value in rows)


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
        "quantize": getattr(embedder, "quantize", None),  # int8 vectors are not fp32 vectors
    }


def load_directory(root: str | Path, patterns: Iterable[str] = DEFAULT_PATTERNS) -> Iterator[Document | Unreadable]:
    """Text files under `root` matching `patterns`, id = path relative to root with '/'."""
    for path, doc_id in list_files(root, patterns):
        yield read_document(path, doc_id)


def list_files(root: str | Path, patterns: Iterable[str] = DEFAULT_PATTERNS) -> list[tuple[Path, str]]:
    """(path, doc id) of the files load_directory reads, in its order."""
    base = Path(root)
    if not base.exists():
        raise InputError(f"no such file or directory: {base}")
    if base.is_file():
        return [(base, base.name)]
    files = sorted({p for pattern in patterns for p in base.rglob(pattern) if p.is_file()})
    return [(path, path.relative_to(base).as_posix()) for path in files]


def load_jsonl(
    path: str | Path,
    *,
    text_field: str = "text",
    id_field: str = "id",
    metadata_field: str | None = "metadata",
) -> Iterator[Document | Unreadable]:
    """One Document per line of a JSON-lines file, read lazily.

    Each line is an object with `text_field` and `id_field`; `metadata_field` (an object) is kept as
    the doc's metadata, or, when the line has no such field, every other field is. A line that is not
    such an object becomes an Unreadable naming the file and line, which ingest reports or raises.
    """
    source = Path(path)
    if not source.is_file():
        raise InputError(f"no such file: {source}")
    with source.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            where = f"{source}:{number}"
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                yield Unreadable(where, f"{where}: not a JSON line ({exc})")
                continue
            if not isinstance(record, dict) or id_field not in record:
                yield Unreadable(where, f"{where}: expected an object with an {id_field!r} field")
                continue
            text = record.get(text_field)
            if metadata_field and metadata_field in record:
                metadata = record[metadata_field]
                if not isinstance(metadata, dict):
                    yield Unreadable(str(record[id_field]), f"{where}: {metadata_field!r} must be an object")
                    continue
            else:
                metadata = {k: v for k, v in record.items() if k not in (text_field, id_field)}
            yield Document(str(record[id_field]), text, dict(metadata))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Unreadable:
    """A source file that could not be read as text; ingest reports it as a bad document."""

    id: str
    reason: str


def read_document(path: Path, doc_id: str) -> Document | Unreadable:
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
    return check_document(doc, f"docs[{position}] (id {doc.id!r})")


def check_document(doc: Document, where: str) -> Document:
    """`doc` if its text is a non-blank str, else an InputError naming `where`."""
    if not isinstance(doc.text, str):
        raise InputError(f"{where} text is {type(doc.text).__name__}, expected str")
    if not doc.text.strip():
        raise InputError(f"{where} is empty")
    return doc


def id_key(doc_id: str) -> bytes:
    """8 bytes standing for a doc id in a run's set of ids seen (duplicates, delete_missing), compactly."""
    return hashlib.blake2b(doc_id.encode(), digest_size=8).digest()


def _content_hash(doc: Document, settings: dict[str, Any], print_: dict[str, Any]) -> str:
    blob = json.dumps([doc.text, doc.metadata, settings, print_], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class _Pending:
    doc: Document
    chunks: list[Chunk]
    content_hash: str


DEFAULT_BATCH_TOKENS = 8192  # chunk tokens per embed call: bounds the vectors and texts held at once
CHECK_WINDOW = 64  # docs whose completeness is asked of the sink in one query


class _Writer:
    """Writes embedded docs to the sink on its own thread while the next batch embeds.

    The queue holds at most two batches, so memory stays bounded when the sink is slower than the
    model. The first sink error stops the writer; `put` and `close` raise it in the caller.
    """

    def __init__(self, sink: Sink, report: IngestReport) -> None:
        self._sink = sink
        self._report = report
        self._queue: queue.Queue[tuple[list[_Pending], np.ndarray] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="embedkit-ingest-writer", daemon=True)
        self._thread.start()

    def put(self, batch: list[_Pending], vectors: np.ndarray) -> None:
        self._raise()
        self._queue.put((batch, vectors))

    def close(self) -> None:
        self.stop()
        self._raise()

    def stop(self) -> BaseException | None:
        """Finish the queued writes and end the thread; returns the error that stopped it, if any."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        return self._error

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(*item)
                except BaseException as error:  # handed to the caller's thread
                    self._error = error

    def _write(self, batch: list[_Pending], vectors: np.ndarray) -> None:
        cursor = 0
        for item in batch:
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
            # the order that makes a crash harmless: new chunks, then surplus removal, then the hash
            self._sink.upsert(points)
            self._report.deleted += self._sink.delete_surplus(doc.id, count)
            self._sink.mark_complete(doc.id, item.content_hash)
            self._report.embedded += 1
            self._report.chunks += count
            self._report.tokens += sum(chunk.token_count for chunk in item.chunks)


def ingest(
    docs: Iterable[Document | Unreadable | dict[str, Any] | str],
    embedder: Embedder,
    sink: Sink,
    chunker: Chunker | None = None,
    *,
    task: str | None = "document",
    dimensions: int | None = None,
    normalize: bool = True,
    reembed: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    delete_missing: bool = False,
    progress: bool | None = None,
) -> IngestReport:
    """Embed `docs` into `sink`; re-running on an unchanged corpus embeds nothing.

    `docs` may be any iterable (a generator over millions is fine): Documents, dicts with `id`,
    `text` and optional `metadata`, or bare strings (id = sha256 of the text). Chunks are embedded
    `batch_tokens` at a time while the previous batch is written, so memory stays bounded. Bad
    documents (empty, not text, unreadable, a repeated id) raise InputError, or with
    `on_error="skip"` are listed in the report's `skipped`. `delete_missing=True` removes the docs
    the collection holds that this run did not see (for a whole directory as the source).

    An error that stops the run carries `.report`: what was written before it stopped. If the run
    stops (an error, or the process killed), what was written is consistent: a doc counts
    as done only once all its chunks carry its content hash, so running again finishes the job and
    leaves exactly the collection a clean run gives.
    """
    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise InputError(f"batch_tokens must be an int >= 1, got {batch_tokens!r}")
    if isinstance(docs, (str, bytes)):
        raise InputError("docs must be an iterable of documents, not a single str; wrap it as [text]")
    started = time.perf_counter()
    chunker = chunker or default_chunker(embedder, task=task)
    print_ = fingerprint(embedder, task=task, dimensions=dimensions, normalize=normalize)
    sink.prepare(print_["dimension"], print_, reembed=reembed)  # a mismatch fails here, before any write
    report = IngestReport()
    seen: set[bytes] = set()  # 8-byte digests of the ids seen: duplicates and delete_missing, compactly
    kept_ids: list[str] | None = [] if delete_missing else None
    pending: list[_Pending] = []
    pending_tokens = 0
    show = sys.stderr.isatty() if progress is None else progress

    def flush() -> None:
        nonlocal pending, pending_tokens
        if pending:
            texts = [chunk.text for item in pending for chunk in item.chunks]
            vectors = embedder.embed(texts, task=task, dimensions=dimensions, normalize=normalize)
            writer.put(pending, vectors)
            pending, pending_tokens = [], 0
            release_freed_memory()  # keeps a long run's RSS flat (see embedkit.memory)

    candidates: list[_Pending] = []

    def check() -> None:
        """Drop the candidates the sink already holds complete; queue the rest for embedding."""
        nonlocal pending_tokens
        if not candidates:
            return
        complete = sink.complete_counts({item.doc.id: item.content_hash for item in candidates})
        for item in candidates:
            if complete.get(item.doc.id, 0) == len(item.chunks):
                report.unchanged += 1
                continue
            pending.append(item)
            pending_tokens += sum(chunk.token_count for chunk in item.chunks)
            if pending_tokens >= batch_tokens:
                flush()
        candidates.clear()

    with _writing(sink, report, started) as writer:
        with tqdm(desc="ingest", unit="doc", disable=not show) as bar:
            for position, item in enumerate(docs):
                report.docs += 1
                try:
                    doc = _as_document(item, position)
                    key = id_key(doc.id)
                    if key in seen:
                        raise InputError(f"docs[{position}]: doc id {doc.id!r} was already seen in this run")
                    seen.add(key)
                    chunks = chunker.split(doc.text)
                except InputError as exc:
                    if on_error == "raise":
                        raise
                    report.skipped.append((_label(item, position), str(exc)))
                    log.warning("skipped docs[%d]: %s", position, exc)
                    continue
                if kept_ids is not None:
                    kept_ids.append(doc.id)
                candidates.append(_Pending(doc, chunks, _content_hash(doc, chunker.settings, print_)))
                if len(candidates) >= CHECK_WINDOW:
                    check()
                bar.update(1)
                if show and report.docs % 100 == 0:
                    elapsed = max(bar.format_dict["elapsed"], 1e-9)
                    bar.set_postfix(chunks=report.chunks, tokens_per_s=f"{report.tokens / elapsed:.0f}")
            check()
            flush()
    return _finish(sink, report, kept_ids, started)


@contextmanager
def _writing(sink: Sink, report: IngestReport, started: float) -> Iterator[_Writer]:
    """A writer for one run's batches. Leaving waits for every write; an error leaving (the run's or the
    sink's) first lets the queued writes finish, then carries `.report`: what was written before it stopped."""
    writer = _Writer(sink, report)
    try:
        yield writer
        writer.close()  # waits for the last writes; raises the sink's error if one stopped it
    except BaseException as error:
        also = writer.stop()  # let the writes already queued finish, so the report says what is stored
        if also is not None and also is not error:  # the first error is raised; the writer's is logged
            log.warning("the writer also failed while stopping: %s", also)
        report.seconds = time.perf_counter() - started
        error.report = report  # type: ignore[attr-defined]  # what was written before it stopped
        raise


def _finish(sink: Sink, report: IngestReport, kept_ids: list[str] | None, started: float) -> IngestReport:
    """After every write: remove the docs this run did not see (delete_missing), and stop the clock."""
    if kept_ids is not None:
        removed = sink.delete_docs_except(set(kept_ids))
        report.deleted_docs, report.deleted = removed[0], report.deleted + removed[1]
    report.seconds = time.perf_counter() - started
    return report


def _label(item: Any, position: int) -> str:
    label = getattr(item, "id", None) or (item.get("id") if isinstance(item, dict) else None)
    return str(label if label is not None else position)
