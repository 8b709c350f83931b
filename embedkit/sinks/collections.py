"""Whole collections: copy one to another Qdrant store (`push`), and move a qdrant-client local-mode folder
onto Qdrant Edge (`convert_folder`). `embedkit collections ...` is the command line over these."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedkit.errors import StoreError
from embedkit.sinks.qdrant import FINGERPRINT_KEY, INDEX_TYPES, QdrantSink

__all__ = ["PUSH_KEY", "PushReport", "convert_folder", "push"]

log = logging.getLogger(__name__)

PUSH_KEY = "embedkit_push"  # target metadata: where an unfinished push resumes ({"offset", "copied"}), or None
_CHECKPOINT_EVERY = 16  # pages between checkpoints: a resumed push sends at most this many pages again


@dataclass
class PushReport:
    collection: str
    copied: int = 0  # points sent by this run
    resumed_at: int = 0  # points an earlier, interrupted run had already sent
    source_points: int = 0
    target_points: int = 0  # after the copy; more than source_points when the target held points of its own
    seconds: float = 0.0

    def summary(self) -> str:
        resumed = f" (resumed after {self.resumed_at})" if self.resumed_at else ""
        return (
            f"{self.collection}: {self.copied} points copied{resumed} in {self.seconds:.1f}s; "
            f"source {self.source_points}, target {self.target_points}"
        )


def push(
    source: QdrantSink,
    target: QdrantSink,
    *,
    page_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> PushReport:
    """Copy every point of `source` (ids, dense and sparse vectors, payloads), its vector config, metadata (the
    embedder fingerprint and probes, the sparse encoder's) and payload indexes into `target`, a page of
    `page_size` points per write.

    Resumable: the target's metadata records how far the copy got (PUSH_KEY) every few pages, and a later
    push of the same collection starts there; upserts are idempotent, so a page sent twice does no harm.
    Writes to a server are retried on transient failures by the target sink. Points the target already
    held and the source lacks are kept (the report counts them). `progress(n)` is called with the points
    copied after each page.

    Raises StoreError when the source does not exist, or the target exists with other vectors or another
    embedder's fingerprint (nothing is written then).
    """
    started = time.perf_counter()
    metadata, vectors, sparse = source.metadata(), source.vectors(), source.sparse_vectors()
    report = PushReport(source.collection, source_points=source.count())
    offset: Any = None
    if not target.exists():
        target.create(vectors, {**metadata, PUSH_KEY: {"offset": None, "copied": 0}}, sparse=sparse)
    else:
        theirs = target.metadata()
        if target.vectors() != vectors or target.sparse_vectors() != sparse:
            theirs_vectors = (target.vectors(), target.sparse_vectors())
            raise StoreError(
                f"{target!r} holds other vectors {theirs_vectors} than {source!r} {(vectors, sparse)}; push elsewhere"
            )
        if theirs.get(FINGERPRINT_KEY) != metadata.get(FINGERPRINT_KEY):
            raise StoreError(
                f"{target!r} was written by another embedder ({theirs.get(FINGERPRINT_KEY)}) than {source!r} "
                f"({metadata.get(FINGERPRINT_KEY)}); push elsewhere, or drop it first"
            )
        state = theirs.get(PUSH_KEY)
        if isinstance(state, dict):
            offset, report.resumed_at = state.get("offset"), int(state.get("copied") or 0)
            log.info("resuming the push of %r after %d points", source.collection, report.resumed_at)
    for field, kind in source.payload_indexes().items():
        if kind in INDEX_TYPES:
            target.create_payload_index(field, kind)
        else:
            log.warning("payload index %r of type %r is not copied (embedkit copies %s)", field, kind, INDEX_TYPES)
    copied, pages = report.resumed_at, 0
    while True:
        page, offset = source.page(offset, page_size)
        target.upsert_stored(page)
        copied += len(page)
        report.copied += len(page)
        pages += 1
        if progress is not None:
            progress(copied)
        if offset is None:
            break
        if pages % _CHECKPOINT_EVERY == 0:
            target.update_metadata({**metadata, PUSH_KEY: {"offset": offset, "copied": copied}})
    target.update_metadata({**metadata, PUSH_KEY: None})
    report.target_points = target.count()
    report.seconds = time.perf_counter() - started
    return report


def _named(progress: Callable[[str, int], None] | None, name: str) -> Callable[[int], None] | None:
    return None if progress is None else lambda copied: progress(name, copied)


def convert_folder(path: str | Path, *, progress: Callable[[str, int], None] | None = None) -> Path:
    """Move the qdrant-client local-mode store at `path` onto Qdrant Edge, every collection, and return where
    the original folder was kept.

    The Edge store is built beside it (`<path>.edge-converting`), checked (every collection's point count),
    then the folders are swapped: the original becomes `<path>.client-local-backup` (delete it when done) and
    the Edge store takes `path`. Nothing is changed at `path` until the copy is complete; a failed or
    interrupted run leaves the original as it was (run again: the half-made copy is replaced).
    Raises StoreError when `path` is not a local-mode store or the backup name is taken.
    """
    from embedkit.sinks.client import ClientSink
    from embedkit.sinks.edge import EdgeSink, store_kind

    root = Path(path).resolve()
    if store_kind(root) != "client-local":
        raise StoreError(f"{root} is not a qdrant-client local-mode store (meta.json, collection/): nothing to convert")
    building = root.with_name(root.name + ".edge-converting")
    backup = root.with_name(root.name + ".client-local-backup")
    if backup.exists():
        raise StoreError(f"{backup} exists (an earlier conversion's backup?): move it away first")
    if building.exists():
        shutil.rmtree(building)
    with ClientSink("_", path=root) as lister:  # closing any sink of the path closes its one client
        names = lister.collection_names()
    for name in names:
        with ClientSink(name, path=root) as source, EdgeSink(name, path=building) as target:
            report = push(source, target, progress=_named(progress, name))
            if report.target_points != report.source_points:
                raise StoreError(
                    f"converting {name!r}: {report.source_points} points read, {report.target_points} stored"
                )
            target.optimize()
    building.mkdir(exist_ok=True)  # a folder without collections converts to an empty store
    os.rename(root, backup)
    os.rename(building, root)
    return backup
