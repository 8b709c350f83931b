"""docs -> chunks -> vectors -> sink in one process, idempotent and safe to re-run after a crash.

Per document: check it, hash it (text + metadata + chunker settings + embedder fingerprint), and skip it
when the collection already holds it complete (records.Complete); only the others are chunked, embedded,
and handed to the writer thread (writer.py), which stores them in the crash-safe order while the next
batch embeds. The collection is asked about CHECK_WINDOW documents at a time.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Collection, Iterable
from functools import partial
from typing import Any, Literal

from embedkit.chunking import Chunk, Chunker, default_chunker
from embedkit.embedder import Embedder
from embedkit.errors import InputError
from embedkit.ingestion.records import (
    MULTIVECTOR_COMPARED,
    Complete,
    content_hash,
    fingerprint,
    multivector_fingerprint,
    open_collection,
    open_multivector,
    open_sparse,
    probe_vectors,
    record_multivector,
)
from embedkit.ingestion.report import IngestReport, Run, progress_bar, show_progress
from embedkit.ingestion.sources import Document, Unreadable, check_document, qualify
from embedkit.ingestion.writer import Extras, Pending, writing
from embedkit.memory import release_freed_memory
from embedkit.sinks.base import Sink
from embedkit.sparse.base import SparseEncoder

__all__ = ["CHECK_WINDOW", "DEFAULT_BATCH_TOKENS", "chunk_pending", "ingest"]

DEFAULT_BATCH_TOKENS = 8192  # chunk tokens per embed call: bounds the vectors and texts held at once
CHECK_WINDOW = 64  # docs whose completeness is asked of the sink in one query


def chunk_pending(chunker: Chunker, doc: Document, hash_: str, complete: Complete) -> list[Chunk] | None:
    """The completeness rule, for both drivers: None, and nothing chunked, when the collection holds this
    version of `doc` complete; else its chunks (InputError when it cannot be chunked)."""
    if (doc.id, hash_) in complete:
        return None
    return chunker.split(doc.text, strategy=doc.strategy)


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
    sparse: SparseEncoder | None = None,
    multivector: bool = False,
) -> IngestReport:
    """Embed `docs` into `sink`; re-running on an unchanged corpus chunks and embeds nothing.

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

    The collection accepts this embedder when it reproduces the collection's probe vectors (see
    embedkit.ingestion.records); else StoreError before any write, unless `reembed=True`.

    `sparse` (a SparseEncoder: embedkit.sparse.BM25Encoder, a SPLADE model) also stores a sparse vector per
    chunk, for hybrid search. A collection without sparse vectors gains them: the points already stored get
    theirs from their page_content, their dense vectors kept (the report's `sparse_filled`). Stored sparse
    vectors of another encoder are refused unless `reembed=True`, which recomputes them all.

    `multivector=True` also stores each chunk's ColBERT multivector (bge-m3's `colbert_linear` head; InputError
    for an embedder without one) for a MaxSim rerank (`QdrantSink.search(..., multivector=...)`): each batch
    runs ONE `embed_all` pass for the dense and ColBERT vectors, and for the lexical weights when `sparse` is
    the same model's M3SparseEncoder with the same prompt (they are then taken from that pass for every chunk
    whose embedded text is its page_content, the others' from the encoder), all stored in the same upsert.
    The collection records the head and refuses another head's multivectors unless `reembed=True` (every doc
    is embedded again), and refuses a run without multivectors once it has them. A collection created without
    the multivector cannot gain one: StoreError naming the fix (a new collection).

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
    colbert = _colbert(embedder, multivector, task)
    open_multivector(sink, colbert, reembed=reembed)  # before anything is created or written
    size = None if colbert is None else colbert["size"]
    # a mismatch fails here, before any write
    hash_print = open_collection(sink, print_, probes, reembed=reembed, multivector=size)
    if colbert is not None:
        record_multivector(sink, colbert)
        # another head's rows must be written again for every doc (reembed=True): the head is part of the hash
        hash_print = {**hash_print, "multivector": {key: colbert[key] for key in MULTIVECTOR_COMPARED}}
    lexical = colbert is not None and _same_lexical(embedder, sparse, task)
    report = IngestReport()
    if sparse is not None:
        report.sparse_filled = open_sparse(sink, sparse, reembed=reembed)
    run = Run(on_error, report)
    default_source = source or ""
    pending: list[Pending] = []
    pending_tokens = 0
    show = sys.stderr.isatty() if progress is None else progress

    def flush() -> None:
        nonlocal pending, pending_tokens
        if pending:
            texts = [chunk.embedding_text for item in pending for chunk in item.chunks]
            if colbert is None:
                writer.put(pending, embedder.embed(texts, task=task, dimensions=dimensions, normalize=normalize))
            else:  # one forward pass: the dense vectors, the ColBERT rows and the lexical weights
                out = embedder.embed_all(texts, task=task, dimensions=dimensions, normalize=normalize)  # type: ignore[attr-defined]
                writer.put(pending, out.dense, Extras(out.multivector, out.lexical if lexical else None))
            pending, pending_tokens = [], 0
            release_freed_memory()  # keeps a long run's RSS flat (see embedkit.memory)

    candidates: list[tuple[Document, str, str]] = []  # (doc, where it was read, content hash)

    def check() -> None:
        """Drop the candidates the sink already holds complete; chunk the rest and queue them for embedding."""
        nonlocal pending_tokens
        if not candidates:
            return
        complete = Complete.fold(sink.hashed_points([doc.id for doc, _, _ in candidates]))
        for doc, where, hash_ in candidates:
            try:
                chunks = chunk_pending(chunker, doc, hash_, complete)
            except InputError as exc:
                report.chunked += 1
                run.bad(doc.id, doc.source, where, str(exc))
                continue
            if chunks is None:
                report.unchanged += 1
                continue
            report.chunked += 1
            pending.append(Pending(doc, chunks, hash_))
            pending_tokens += sum(chunk.token_count for chunk in chunks)
            if pending_tokens >= batch_tokens:
                flush()
        candidates.clear()

    with progress_bar("ingest", total if total is not None else _length(docs), show) as bar:
        with writing(sink, report, started, sparse) as writer:
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
                except InputError as exc:
                    run.bad(doc.id, doc.source, where, str(exc))
                    continue
                candidates.append((doc, where, content_hash(doc, chunker.settings, hash_print)))
                if len(candidates) >= CHECK_WINDOW:
                    check()
                if show:
                    show_progress(bar, report)
            check()
            flush()
        if show:  # the writes have finished: show what they stored
            show_progress(bar, report)
            bar.refresh()
    return run.finish(sink, delete_missing=delete_missing, force_delete=force_delete, sources=sources, started=started)


def _colbert(embedder: Embedder, multivector: bool, task: str | None) -> dict[str, Any] | None:
    """The multivector head's fingerprint when the run stores multivectors (InputError without a ColBERT head)."""
    if not isinstance(multivector, bool):
        raise InputError(f"multivector must be True or False, got {multivector!r}")
    if not multivector:
        return None
    print_ = multivector_fingerprint(embedder, task=task)
    if print_ is None or not hasattr(embedder, "embed_all"):
        raise InputError(
            f"multivector=True needs an embedder with a ColBERT head (colbert_linear.pt beside a local model's "
            f"weights, as bge-m3 ships it); {embedder.model_id!r} has none"
        )
    return print_


def _same_lexical(embedder: Embedder, sparse: SparseEncoder | None, task: str | None) -> bool:
    """Whether `sparse` gives the lexical weights of `embedder`'s own pass: the same model's M3SparseEncoder
    (weights and head digests) encoding with the same task, so the same prompt, as the dense side."""
    # looked up, not imported: that module needs torch, which a TEI + BM25 ingest never loads; while it is
    # not imported, `sparse` cannot be one of its encoders
    m3 = sys.modules.get("embedkit.sparse.bge_m3")
    if m3 is None or not isinstance(sparse, m3.M3SparseEncoder):
        return False
    heads = getattr(embedder, "heads", None)
    print_ = sparse.fingerprint()
    return (
        heads is not None
        and heads.sparse is not None
        and print_["weights_digest"] == getattr(embedder, "weights_digest", None)
        and print_["head_digest"] == heads.digest
        and print_["max_length"] == embedder.max_input_tokens
        and (print_["task"] == task or _same_prompt(embedder, task, print_["task"]))
    )


def _same_prompt(embedder: Any, task: str | None, other: str | None) -> bool:
    """Whether both tasks give a text the same model input: the same prompt tokens and no task adapters
    (bge-m3 has neither: its "document" task and the sparse encoder's None both embed the bare text)."""
    try:
        if embedder.describe()["adapters"]:
            return False
        return bool(embedder.tokenize(["x"], task=task)[0].ids == embedder.tokenize(["x"], task=other)[0].ids)
    except InputError:
        return False


def _length(docs: Any) -> int | None:
    try:
        return len(docs)
    except TypeError:  # a generator: the bar counts without a total
        return None


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
