"""The writer thread: stores embedded documents in the sink while the next batch embeds.

Per document, in the order that makes a crash harmless (see records.py): upsert its chunks without a
content hash, delete its surplus chunks (a changed doc that shrank), then set the hash on its points.
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
from embedkit.sparse.base import SparseEncoder

__all__ = ["Pending", "Writer", "writing"]

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """A document to store: its chunks, in order, and the content hash that marks it complete."""

    doc: Document
    chunks: list[Chunk]
    content_hash: str


class Writer:
    """Writes embedded docs to the sink on its own thread while the next batch embeds.

    The queue holds at most two batches, so memory stays bounded when the sink is slower than the
    model. The first sink error stops the writer; `put` and `close` raise it in the caller.
    """

    def __init__(self, sink: Sink, report: IngestReport, sparse: SparseEncoder | None = None) -> None:
        self._sink = sink
        self._report = report
        self._sparse = sparse
        self._queue: queue.Queue[tuple[list[Pending], np.ndarray] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="embedkit-ingest-writer", daemon=True)
        self._thread.start()

    def put(self, batch: list[Pending], vectors: np.ndarray) -> None:
        """Queue `batch` for writing; `vectors` float32 (total chunks of the batch, dim), in chunk order."""
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

    def _write(self, batch: list[Pending], vectors: np.ndarray) -> None:
        # the sparse vectors of the whole batch in one call, on this thread: it overlaps the next batch's
        # dense embedding; each is computed from the chunk's page_content, as fill_sparse recomputes it
        sparse = (
            iter(self._sparse.embed_documents([c.text for item in batch for c in item.chunks]))
            if self._sparse
            else None
        )
        cursor = 0
        for item in batch:
            doc, count = item.doc, len(item.chunks)
            points = [
                Point(
                    point_id(doc.id, chunk.index),
                    vectors[cursor + chunk.index].tolist(),
                    chunk_payload(doc, chunk, count),
                    next(sparse) if sparse is not None else None,
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
