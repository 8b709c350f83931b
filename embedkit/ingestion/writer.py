"""The writer thread: stores embedded documents in the sink while the next batch embeds.

Per document, in the order that makes a crash harmless (see records.py): upsert its chunks without a
content hash, delete its surplus chunks (a changed doc that shrank), then set the hash on its points. Every
vector of a chunk (dense, sparse, ColBERT multivector) goes in the same upsert, so a point never holds some
of this version's vectors and not the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from embedkit.chunking import Chunk
from embedkit.ingestion.records import chunk_payload, point_id
from embedkit.ingestion.report import IngestReport
from embedkit.ingestion.sources import Document
from embedkit.sinks.base import Point, Sink
from embedkit.sparse.base import SparseEncoder, SparseVector

__all__ = ["Extras", "Pending", "Writer", "writing"]

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """A document to store: its chunks, in order, and the content hash that marks it complete."""

    doc: Document
    chunks: list[Chunk]
    content_hash: str


@dataclass(frozen=True)
class Extras:
    """What one forward pass gave beside a batch's dense vectors, per chunk in chunk order (`embed_all`)."""

    multivectors: list[np.ndarray] | None = None  # float32 [n_tokens - 1, D] per chunk: stored as the multivector
    # the lexical weights of each chunk's `embedding_text`, when they are what the sparse encoder would give for
    # it; used for the chunks whose embedding_text is their page_content (no heading context)
    lexical: list[dict[int, float]] | None = None


class Writer:
    """Writes embedded docs to the sink on its own thread while the next batch embeds.

    The queue holds at most two batches, so memory stays bounded when the sink is slower than the
    model. The first sink error stops the writer; `put` and `close` raise it in the caller.
    """

    def __init__(self, sink: Sink, report: IngestReport, sparse: SparseEncoder | None = None) -> None:
        self._sink = sink
        self._report = report
        self._sparse = sparse
        self._queue: queue.Queue[tuple[list[Pending], np.ndarray, Extras] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="embedkit-ingest-writer", daemon=True)
        self._thread.start()

    def put(self, batch: list[Pending], vectors: np.ndarray, extras: Extras | None = None) -> None:
        """Queue `batch` for writing; `vectors` float32 (total chunks of the batch, dim), in chunk order, and
        what the same pass gave beside them (`extras`)."""
        self._raise()
        self._queue.put((batch, vectors, extras or Extras()))

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

    def _sparse_vectors(self, chunks: list[Chunk], lexical: list[dict[int, float]] | None) -> list[SparseVector]:
        """Each chunk's sparse vector as the encoder gives it for its page_content (as fill_sparse recomputes
        it): from the pass's lexical weights where the model saw exactly that text, the rest in one call."""
        assert self._sparse is not None
        out: list[SparseVector | None] = [None] * len(chunks)
        if lexical is not None:
            for at, (chunk, weights) in enumerate(zip(chunks, lexical, strict=True)):
                if chunk.embedding_text == chunk.text:
                    out[at] = SparseVector(sorted(weights), [float(weights[i]) for i in sorted(weights)])
        missing = [at for at, vector in enumerate(out) if vector is None]
        if missing:
            for at, vector in zip(
                missing, self._sparse.embed_documents([chunks[at].text for at in missing]), strict=True
            ):
                out[at] = vector
        return [vector for vector in out if vector is not None]

    def _write(self, batch: list[Pending], vectors: np.ndarray, extras: Extras) -> None:
        # the sparse vectors of the whole batch in one call, on this thread: it overlaps the next batch's
        # dense embedding
        chunks = [c for item in batch for c in item.chunks]
        sparse = iter(self._sparse_vectors(chunks, extras.lexical)) if self._sparse else None
        multivectors = extras.multivectors
        cursor = 0
        for item in batch:
            doc, count = item.doc, len(item.chunks)
            points = [
                Point(
                    point_id(doc.id, chunk.index),
                    vectors[cursor + chunk.index].tolist(),
                    chunk_payload(doc, chunk, count),
                    next(sparse) if sparse is not None else None,
                    multivectors[cursor + chunk.index].tolist() if multivectors is not None else None,
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


@contextmanager
def writing(sink: Sink, report: IngestReport, started: float, sparse: SparseEncoder | None = None) -> Iterator[Writer]:
    """A writer for one run's batches. Leaving waits for every write; an error leaving (the run's or the
    sink's, or Ctrl-C) first lets the queued writes finish, then carries `.report`: what was written before
    it stopped."""
    writer = Writer(sink, report, sparse)
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
