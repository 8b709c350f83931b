"""docs -> chunks -> vectors -> sink, idempotent and safe to re-run after a crash.

Per document: chunk, hash (text + metadata + chunker settings + embedder fingerprint), and skip it
when the sink already holds exactly `chunk_count` points carrying that hash. Otherwise embed, then
write in three steps so a run killed at any moment and run again ends in the same collection:
upsert the chunks without a hash, delete the doc's surplus chunks, set the hash on its points.

Which embedder may write to a collection is decided by probes: the collection records the vectors
of a few fixed texts when it is created, and an embedder may write to it iff it reproduces them
(same dimension, normalisation and task settings, cosine >= PROBE_AGREEMENT). So the same weights
run locally, on ONNX Runtime, through `embedkit serve` or a TEI server share a collection, and other
weights under the same model id are refused.
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
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from embedkit.chunking import Chunk, Chunker, default_chunker
from embedkit.embedder import Embedder
from embedkit.errors import InputError, StoreError
from embedkit.memory import release_freed_memory
from embedkit.sinks.base import Point, Sink
from embedkit.sources import (
    DEFAULT_PATTERNS,
    Document,
    Unreadable,
    check_document,
    load_directory,
    load_jsonl,
    qualify,
)

__all__ = [
    "Document",
    "Unreadable",
    "IngestReport",
    "ingest",
    "load_directory",
    "load_jsonl",
    "point_id",
    "fingerprint",
    "chunk_payload",
    "probe_vectors",
    "open_collection",
    "check_reader",
    "NAMESPACE",
    "DEFAULT_PATTERNS",
    "PROBE_TEXTS",
    "PROBE_AGREEMENT",
]

log = logging.getLogger(__name__)

NAMESPACE = uuid.UUID("4f8a1b7e-3c2d-5e6f-9a0b-1c2d3e4f5a6b")  # fixed: point ids never change
ID_SCHEME = 2  # doc ids carry their source (embedkit.sources); collections written before did not
# fixed texts whose vectors identify an embedder's vector space (prose, code, non-Latin scripts)
PROBE_TEXTS = (
    "The committee approved the budget after a long debate about the new library.",
    "def mean(values):\n    return sum(values) / len(values)",
    "Le chat dort sur le canapé. 猫はソファで寝ている。 Кошка спит на диване.",
)
PROBE_AGREEMENT = 0.9999  # the same weights agree to ~1e-6 across backends; other weights far below
# settings that must be equal besides the probes: they change the vectors without changing the model
_SETTINGS = ("dimension", "task", "dimensions", "normalize")
# fields that decided compatibility before collections had probes (model_id is only a label)
_COMPARED = ("weights_digest", "dimension", "task", "dimensions", "normalize", "quantize")


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
        "id_scheme": ID_SCHEME,
    }


def chunk_payload(doc: Document, chunk: Chunk, chunk_count: int) -> dict[str, Any]:
    """THE payload of one stored chunk (every driver writes through this): the chunk's text and its
    document's metadata as langchain-qdrant reads them, then embedkit's own fields. `start` and `end`
    index the source as stored (a byte-order mark counted); `page_content` never holds one."""
    return {
        "page_content": chunk.text,
        "metadata": doc.metadata,
        "doc_id": doc.id,
        "source": doc.source,
        "chunk_index": chunk.index,
        "chunk_count": chunk_count,
        "start": chunk.start + doc.offset,
        "end": chunk.end + doc.offset,
        "headings": list(chunk.headings),
    }


# -- which embedder may write to a collection --------------------------------------------------------


def probe_vectors(embedder: Embedder, *, task: str | None, dimensions: int | None, normalize: bool) -> np.ndarray:
    """The embedder's vectors of PROBE_TEXTS with these settings: float32 (len(PROBE_TEXTS), dim)."""
    return embedder.embed(list(PROBE_TEXTS), task=task, dimensions=dimensions, normalize=normalize)


def open_collection(
    sink: Sink, print_: dict[str, Any], probes: Callable[[], np.ndarray], *, reembed: bool
) -> dict[str, Any]:
    """Create the collection (recording `print_` and the vectors `probes()` gives) or check that this
    embedder may write to it.

    Returns the fingerprint that goes into content hashes: the recorded one when the collection accepts
    this embedder, so documents stored through another backend of the same weights count as unchanged.
    Raises StoreError, before anything is written, when the collection's vectors are not comparable
    with this embedder's (unless `reembed`, which re-records this embedder and so re-embeds every doc).
    `probes` is called only when needed: not when the recorded fingerprint names these very weights.
    """
    recorded = sink.recorded_fingerprint()
    label = f"collection {getattr(sink, 'collection', '')!r}"
    if recorded is not None and recorded.get("id_scheme") != ID_SCHEME:  # re-embedding would not help either
        raise StoreError(
            f"{label} was written by an earlier embedkit whose doc ids did not carry their source; "
            "ingest into a new collection (or remove this one first): re-using it would store every document twice"
        )
    if recorded is None or reembed:  # a new collection, or one another tool made, or re-recorded on purpose
        vectors = np.asarray(probes(), dtype=np.float32)
        record = {"texts": list(PROBE_TEXTS), "vectors": vectors.round(7).tolist()}
        sink.prepare(print_["dimension"], print_, probes=record, rewrite=True)
        return print_
    sink.prepare(print_["dimension"], print_, probes=None, rewrite=False)  # dimension and distance checks
    if _same_weights(recorded, print_):
        return recorded  # these very weights, run the same way, wrote it: nothing to probe
    stored = sink.recorded_probes()
    if stored is None:  # written before collections had probes: the fingerprint fields decide
        differing = [key for key in _COMPARED if recorded.get(key) != print_.get(key)]
        if differing:
            raise _refused(label, recorded, print_, differing)
        return recorded
    differing = [key for key in _SETTINGS if recorded.get(key) != print_.get(key)]
    if differing:
        raise _refused(label, recorded, print_, differing)
    agreement = _agreement(stored, probes())
    if agreement < PROBE_AGREEMENT:
        differing = [k for k in ("weights_digest", "quantize") if recorded.get(k) != print_.get(k)]
        known = (
            f" (recorded {_fields(recorded, differing)}; this one {_fields(print_, differing)})" if differing else ""
        )
        raise StoreError(
            f"{label} was written by embedder {recorded.get('model_id')!r} and this embedder "
            f"({print_.get('model_id')!r}) does not reproduce its vectors (probe cosine {agreement:.6f} < "
            f"{PROBE_AGREEMENT}): other weights, or another quantisation{known}. Re-embed everything with "
            "reembed=True (--reembed) or use another collection."
        )
    return recorded


def check_reader(sink: Sink, embedder: Embedder) -> None:
    """StoreError unless `embedder` reproduces the collection's probe vectors with the settings the
    collection was written with, so that its query vectors compare with the stored ones (a model id
    whose weights changed since, say). Collections without probes pass; nothing is embedded when the
    recorded fingerprint names these very weights."""
    recorded, stored = sink.recorded_fingerprint(), sink.recorded_probes()
    if recorded is None or stored is None:
        return
    settings = {key: recorded.get(key) for key in ("task", "dimensions")} | {
        "normalize": recorded.get("normalize", True)
    }
    if _same_weights(recorded, fingerprint(embedder, **settings)):
        return
    agreement = _agreement(stored, probe_vectors(embedder, **settings))
    if agreement < PROBE_AGREEMENT:
        raise StoreError(
            f"collection {getattr(sink, 'collection', '')!r} was written by embedder {recorded.get('model_id')!r}, "
            f"and {embedder.model_id!r} does not reproduce its vectors (probe cosine {agreement:.6f}): its query "
            "vectors would not compare with the stored ones. Search with the model that wrote it."
        )


def _same_weights(recorded: dict[str, Any], print_: dict[str, Any]) -> bool:
    """Whether the fingerprints name the same known weights run the same way (then the vectors are the same)."""
    return print_.get("weights_digest") is not None and all(recorded.get(k) == print_.get(k) for k in _COMPARED)


def _agreement(stored: dict[str, Any], probes: np.ndarray) -> float:
    """The lowest cosine between the stored probe vectors and `probes`, the vectors of PROBE_TEXTS."""
    if stored.get("texts") != list(PROBE_TEXTS):
        return -1.0  # probes of other texts cannot be compared; treat as disagreement
    probes = np.asarray(probes, dtype=np.float32)
    reference = np.asarray(stored.get("vectors"), dtype=np.float32)
    if reference.shape != probes.shape:
        return -1.0
    dots = np.sum(reference * probes, axis=1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(probes, axis=1)
    return float(np.min(dots / np.maximum(norms, 1e-12)))


def _fields(print_: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{key}={print_.get(key)!r}" for key in keys)


def _refused(label: str, recorded: dict[str, Any], print_: dict[str, Any], differing: list[str]) -> StoreError:
    return StoreError(
        f"{label} was written by embedder {recorded.get('model_id')!r} ({_fields(recorded, differing)}); this "
        f"one is {print_.get('model_id')!r} ({_fields(print_, differing)}). Re-embed everything with "
        "reembed=True (--reembed) or use another collection."
    )


# -- one run's bookkeeping, shared by the single-process and the Ray drivers ----------------------


def id_key(doc_id: str) -> bytes:
    """8 bytes standing for a doc id in a run's set of ids seen (duplicates, delete_missing), compactly."""
    return hashlib.blake2b(doc_id.encode(), digest_size=8).digest()


def _content_hash(doc: Document, settings: dict[str, Any], print_: dict[str, Any]) -> str:
    # the strategy a file's format implies changes the chunks as much as the chunker's settings do
    blob = json.dumps([doc.text, doc.metadata, settings, print_, doc.strategy], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class _Run:
    """What one run has read: the report, the ids seen (for duplicates), the ids and sources that
    delete_missing must keep, and the bad-document policy."""

    def __init__(self, on_error: str, report: IngestReport) -> None:
        self.on_error = on_error
        self.report = report
        self._seen: set[bytes] = set()  # 8-byte digests of the ids read: memory stays small over millions
        self._kept: set[bytes] = set()  # skipped docs with a known id: never deleted
        self.sources: set[str] = set()  # sources this run read anything from
        self.guarded: set[str] = set()  # sources with a skipped record of unknown id: nothing deleted there

    def accept(self, doc_id: str, source: str, where: str) -> None:
        """Count a readable document; InputError when its id was already read in this run."""
        self.sources.add(source)
        key = id_key(doc_id)
        if key in self._seen:
            raise InputError(
                f"{where}: doc id {doc_id!r} was already read in this run (two paths under one source name "
                "holding the same file, or a repeated id)"
            )
        self._seen.add(key)

    def bad(self, doc_id: str | None, source: str, label: str, reason: str, *, empty: bool = False) -> None:
        """A document that cannot be stored: raised (on_error='raise', unless it is an empty file), or
        skipped, reported, and protected from delete_missing."""
        self.sources.add(source)
        if self.on_error == "raise" and not empty:
            raise InputError(reason)
        if doc_id is None:
            self.guarded.add(source)
        else:
            self._kept.add(id_key(doc_id))
        self.report.skipped.append((label, reason))
        log.warning("skipped %s", reason if reason.startswith(label) else f"{label}: {reason}")

    def keeps(self, doc_id: str) -> bool:
        key = id_key(doc_id)
        return key in self._seen or key in self._kept

    def finish(
        self, sink: Sink, *, delete_missing: bool, force_delete: bool, sources: Collection[str], started: float
    ) -> IngestReport:
        """After every write: warn about an empty run, remove what delete_missing should, stop the clock."""
        report = self.report
        unread = sorted(set(sources) - self.sources)
        if report.docs == 0 or unread:
            what = f"source(s) {', '.join(map(repr, unread))}" if unread else "the input"
            if delete_missing and not force_delete:
                report.seconds = time.perf_counter() - started
                error = InputError(
                    f"read no documents from {what}; delete_missing would remove everything stored for it, so "
                    "nothing was deleted. Check the paths and --glob patterns, or force it (--force-delete)"
                )
                error.report = report  # type: ignore[attr-defined]
                raise error
            log.warning("read no documents from %s", what)
        if delete_missing:
            for source in sorted(self.guarded):
                log.warning("source %r had records without a readable id; none of its docs were deleted", source)
            covered = (self.sources | set(sources)) - self.guarded
            if covered:
                docs, points = sink.delete_missing(covered, self.keeps)
                report.deleted_docs, report.deleted = docs, report.deleted + points
        report.seconds = time.perf_counter() - started
        return report


def _as_document(item: Any, position: int, source: str) -> Document | Unreadable:
    """Any accepted input as a Document (not yet checked) or an Unreadable."""
    if isinstance(item, (Document, Unreadable)):
        return item
    if isinstance(item, str):
        local = hashlib.sha256(item.encode("utf-8", "surrogatepass")).hexdigest()
        return Document(qualify(source, local), item, {}, source, f"docs[{position}]")
    if isinstance(item, dict):
        if item.get("id") is None:
            return Unreadable(None, f"docs[{position}] has no 'id' field", source, f"docs[{position}]")
        doc_id = qualify(source, str(item["id"]))
        metadata = item.get("metadata")
        return Document(doc_id, item.get("text"), {} if metadata is None else metadata, source,  # type: ignore[arg-type]
                        f"docs[{position}] (id {str(item['id'])!r})")  # fmt: skip
    where = f"docs[{position}]"
    return Unreadable(None, f"{where} is {type(item).__name__}; expected Document, dict or str", source, where)


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
                    chunk_payload(doc, chunk, count),
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
    source: str | None = None,
    sources: Collection[str] = (),
    task: str | None = "document",
    dimensions: int | None = None,
    normalize: bool = True,
    reembed: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    delete_missing: bool = False,
    force_delete: bool = False,
    progress: bool | None = None,
    total: int | None = None,
) -> IngestReport:
    """Embed `docs` into `sink`; re-running on an unchanged corpus embeds nothing.

    `docs` may be any iterable (a generator over millions is fine): Documents (as load_directory and
    load_jsonl read them, ids qualified by their source), dicts with `id`, `text` and optional
    `metadata`, or bare strings (id = sha256 of the text); dict and str ids are qualified by `source`
    ("crm" and id "7" -> "crm/7"; none by default). Chunks are embedded `batch_tokens` at a time while
    the previous batch is written, so memory stays bounded. Bad documents (empty, not text, text that
    cannot be encoded, metadata JSON cannot hold, unreadable, a repeated id) raise InputError naming
    the file or position, or with `on_error="skip"` are listed in the report's `skipped`; empty files
    are always skipped with a warning.

    `delete_missing=True` removes the stored docs of this run's sources (those it read from, plus
    `sources`) that it did not see; never a doc it skipped, never another source's, never points
    without embedkit's fields. A run that read nothing from a source it covers deletes nothing and
    raises InputError unless `force_delete=True`.

    The collection accepts this embedder when it reproduces the collection's probe vectors (see the
    module docstring); else StoreError before any write, unless `reembed=True`.

    `progress` shows a bar on stderr (default: when it is a terminal) with the documents read out of
    `total` (default: len(docs) when it has one), the rate, chunks stored and tokens/s.

    An error that stops the run carries `.report`: what was written before it stopped. If the run
    stops (an error, Ctrl-C, or the process killed), what was written is consistent: a doc counts
    as done only once all its chunks carry its content hash, so running again finishes the job and
    leaves exactly the collection a clean run gives.
    """
    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise InputError(f"batch_tokens must be an int >= 1, got {batch_tokens!r}")
    if isinstance(docs, (str, bytes)):
        raise InputError("docs must be an iterable of documents, not a single str; wrap it as [text]")
    if isinstance(sources, str):
        raise InputError("sources must be a collection of source names, not a single str; wrap it as [name]")
    started = time.perf_counter()
    chunker = chunker or default_chunker(embedder, task=task)
    print_ = fingerprint(embedder, task=task, dimensions=dimensions, normalize=normalize)
    probes = partial(probe_vectors, embedder, task=task, dimensions=dimensions, normalize=normalize)
    hash_print = open_collection(sink, print_, probes, reembed=reembed)  # a mismatch fails here, before any write
    report = IngestReport()
    run = _Run(on_error, report)
    default_source = source or ""
    pending: list[_Pending] = []
    pending_tokens = 0
    show = sys.stderr.isatty() if progress is None else progress

    def flush() -> None:
        nonlocal pending, pending_tokens
        if pending:
            texts = [chunk.embedding_text for item in pending for chunk in item.chunks]
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

    with _progress("ingest", total if total is not None else _length(docs), show) as bar:
        with _writing(sink, report, started) as writer:
            for position, item in enumerate(docs):
                report.docs += 1
                bar.update(1)
                doc = _as_document(item, position, default_source)
                where = doc.origin or f"docs[{position}]"
                if isinstance(doc, Unreadable):
                    run.bad(doc.id, doc.source, where, doc.reason, empty=doc.empty)
                    continue
                try:
                    doc = check_document(doc, where)
                    run.accept(doc.id, doc.source, where)
                    chunks = chunker.split(doc.text, strategy=doc.strategy)
                except InputError as exc:
                    run.bad(doc.id, doc.source, where, str(exc))
                    continue
                candidates.append(_Pending(doc, chunks, _content_hash(doc, chunker.settings, hash_print)))
                if len(candidates) >= CHECK_WINDOW:
                    check()
                if show:
                    _show(bar, report)
            check()
            flush()
        if show:  # the writes have finished: show what they stored
            _show(bar, report)
            bar.refresh()
    return run.finish(sink, delete_missing=delete_missing, force_delete=force_delete, sources=sources, started=started)


def _length(docs: Any) -> int | None:
    try:
        return len(docs)
    except TypeError:  # a generator: the bar counts without a total
        return None


def _progress(desc: str, total: int | None, show: bool) -> tqdm:
    """The documents read, of `total` when known, with tqdm's rate and a postfix set by `_show`."""
    return tqdm(desc=desc, total=total, unit="doc", disable=not show, dynamic_ncols=True)


def _show(bar: tqdm, report: IngestReport) -> None:
    """What was stored so far beside the bar (tqdm redraws it at most every 0.1 s, so this is cheap)."""
    elapsed = max(bar.format_dict["elapsed"], 1e-9)
    bar.set_postfix_str(f"{report.chunks} chunks, {report.tokens / elapsed:.0f} tokens/s", refresh=False)


@contextmanager
def _writing(sink: Sink, report: IngestReport, started: float) -> Iterator[_Writer]:
    """A writer for one run's batches. Leaving waits for every write; an error leaving (the run's or the
    sink's, or Ctrl-C) first lets the queued writes finish, then carries `.report`: what was written before
    it stopped."""
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
