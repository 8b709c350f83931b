"""What one ingest run did: the IngestReport it returns, the bookkeeping behind it (Run), and its progress bar.

Both drivers (pipeline.py, ray.py) keep their books with Run, so they count, skip, refuse duplicates and
delete missing documents by the same rules.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from tqdm import tqdm

from embedkit.errors import InputError
from embedkit.sinks.base import Sink

__all__ = ["IngestReport", "Run", "id_key", "progress_bar", "show_progress"]

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    docs: int = 0  # documents seen
    embedded: int = 0
    unchanged: int = 0  # found complete in the collection: skipped before chunking
    chunked: int = 0  # documents chunked: the ones not found complete (a bad one may fail while chunking)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (doc id or position, reason)
    chunks: int = 0  # chunks upserted
    deleted: int = 0  # stale chunks removed (surplus chunks of changed docs, and missing docs' chunks)
    deleted_docs: int = 0  # docs removed by delete_missing
    tokens: int = 0  # chunk tokens embedded
    seconds: float = 0.0
    sparse_filled: int = 0  # stored points given their sparse vector (a collection gaining sparse vectors)
    index_seconds: float = 0.0  # of `seconds`, building the search index at the end (Qdrant Edge; see finish)

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
            ("of which indexing", f"{self.index_seconds:.1f}"),
            ("tokens/s", f"{self.tokens_per_second:.0f}"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value:>10}" for name, value in rows)


def id_key(doc_id: str) -> bytes:
    """8 bytes standing for a doc id in a run's set of ids seen (duplicates, delete_missing), compactly."""
    return hashlib.blake2b(doc_id.encode(), digest_size=8).digest()


class Run:
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
        """After every write: warn about an empty run, remove what delete_missing should, build the search index
        where the store waits to be asked (Qdrant Edge: sink.optimize), stop the clock."""
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
        if report.chunks or report.deleted:
            indexing = time.perf_counter()
            if sink.optimize():
                report.index_seconds = time.perf_counter() - indexing
                log.info("built the search index of %r in %.1f s", sink.collection, report.index_seconds)
        report.seconds = time.perf_counter() - started
        return report


def progress_bar(desc: str, total: int | None, show: bool) -> tqdm:
    """The documents read, of `total` when known, with tqdm's rate and a postfix set by `show_progress`."""
    return tqdm(desc=desc, total=total, unit="doc", disable=not show, dynamic_ncols=True)


def show_progress(bar: tqdm, report: IngestReport) -> None:
    """What was stored so far beside the bar (tqdm redraws it at most every 0.1 s, so this is cheap)."""
    elapsed = max(bar.format_dict["elapsed"], 1e-9)
    bar.set_postfix_str(f"{report.chunks} chunks, {report.tokens / elapsed:.0f} tokens/s", refresh=False)
