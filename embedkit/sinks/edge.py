"""Qdrant sink on Qdrant's own engine in-process (Qdrant Edge, `qdrant-edge-py`): one shard per collection.

Layout under the store path: `<path>/<collection>/shard/` is the Edge shard, `<path>/<collection>/embedkit.json`
records what qdrant-client keeps as collection metadata (the embedder fingerprint, the probe vectors, the
vector name, size and distance).

What this module relies on, from qdrant-edge-py 0.9.0 (`qdrant_edge/__init__.pyi` stubs and docstrings, and
what was checked by running it, marked "seen"):

- `EdgeShard.create(path, EdgeConfig)` makes the folder and a new shard ("fails if the path already contains
  segment data"); `EdgeShard.load(path, config=None)` opens one (a missing folder: "cannot load edge shard:
  directory ... does not exist", seen). A shard holds `wal/`, `segments/` and `edge_config.json` (seen).
  A second `load` of an open shard in the same or another process fails: "failed to open WAL ...: Can't init
  WAL: Kind(WouldBlock)" (seen), so one shard per path is shared within a process.
- `EdgeConfig(vectors=EdgeVectorParams(size, Distance.Cosine))` is the default vector, named "" (docstring);
  `vectors={"dense": EdgeVectorParams(...)}` names them; `sparse_vectors={name: EdgeSparseVectorParams(
  modifier=Modifier.Idf)}`. There is no collection metadata: EdgeConfig has vectors, sparse vectors,
  payload/HNSW/quantisation/optimiser settings, search threads and `wal_enabled` only, and `EdgeShard` has no
  config reader (its members: close, count, create, facet, flush, info, load, optimize, query, query_batch,
  retrieve, scroll, search, snapshot_manifest, unpack_snapshot, update, update_from_snapshot; seen).
- Writes are `shard.update(UpdateOperation.X(...))`: `upsert_points([Point(id, vector, payload)])` (id: int,
  UUID or a UUID string; vector: a list, or {name: list}), `delete_points(ids)`, `delete_points_by_filter(
  Filter)`, `set_payload(ids, payload)` / `set_payload_by_filter(Filter, payload)` (merge, like qdrant-client's
  set_payload), `create_field_index(field, PayloadSchemaType.Keyword | Integer | Float | Bool | ...)`.
  `update` returns once applied: a count right after sees the write (seen). A vector of the wrong size is
  refused: "Vector dimension error: expected dim: 2, got 3" (seen).
- Reads: `scroll(ScrollRequest(offset, limit, filter, with_payload=[fields] | bool, with_vector))` returns
  (records, next offset or None); `count(CountRequest(exact=True, filter))`; `query(QueryRequest(limit,
  query=Query.Nearest(vector, using=name), filter, score_threshold, params=SearchParams(hnsw_ef=, exact=),
  with_payload=True))` returns ScoredPoints best first; record ids of UUID points come back as uuid.UUID
  (seen). `info()` gives points_count, segments_count, indexed_vectors_count and payload_schema (the payload
  indexes, field -> PayloadIndexInfo).
- Filters: `Filter(must, should, must_not)`, `FieldCondition(key, match=MatchValue(v) | MatchAny([...]),
  range=RangeFloat(gte, lte, ...))`, `IsEmptyCondition(key)` (a null counts as empty, seen, as on a server);
  MatchAny([]) matches nothing (seen), as qdrant-client's does. A bug: `MatchValue(True)` is read as the
  integer 1 (its `.value` is 1; it finds a stored 1 and misses a stored true, seen); `MatchValue(numpy.True_)`
  matches booleans, so `_match_value` passes bools that way. Payload bools are stored as booleans (seen).
- Durability: the WAL is on unless `wal_enabled=False` ("Without a WAL, updates are durable only once flush()
  returns"). A process killed by os._exit right after `update` (no flush, no close) left every upsert and
  set_payload on reload (seen), so the crash protocol of embedkit.ingestion.records holds as it does on a
  server. `flush()` writes pending changes, `close()` releases the shard (a second close does nothing; any
  call after it raises "Shard is not initialized", seen). `optimize()` runs the optimisers (HNSW build) in the
  calling thread until done. Nothing indexes in the background: 12,000 random 384-d points upserted, then 5 s
  idle, left indexed_vectors_count at 0; optimize() then took 8.6 s (2 cores) and indexed all 12,000; 30,000
  64-d points (7.7 MB, under the default indexing threshold) were left unindexed by it (seen). Until then a
  search scans every vector (exact). `EdgeOptimizersConfig(indexing_threshold=KB)` sets the threshold.
- Errors are plain `Exception` (no exception classes are exported, seen); this module turns them into
  StoreError at the boundary.

Why a JSON file beside the shard for the metadata, not a reserved point: a point would need a vector of the
collection's size, would be counted by `count`, found by scrolls, filters and searches (and by any tool reading
the shard) unless every query excluded it; a small file is read without opening the shard, and written
atomically (temporary file, fsync, rename) after the shard and its payload indexes exist, so a collection
"exists" exactly when its record does. A shard left without a record (a run killed inside `prepare`) is empty
and is made again.

Calls into a shard are serialised by one lock per shard: the engine's own locking was not measured here,
and ingest counts on one thread while its writer upserts on another.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe
from qdrant_client import models

from embedkit.errors import InputError, StoreError
from embedkit.ingestion.records import CHUNK_COUNT, CHUNK_INDEX, CONTENT_HASH, DOC_ID, METADATA, SOURCE
from embedkit.sinks.base import Point, SearchHit
from embedkit.sinks.qdrant import OWN_FIELDS, metadata_condition, payload_fields, unusable_reason

__all__ = ["INDEX_TYPES", "RECORD_FILE", "SHARD_DIR", "EdgeSink", "store_kind"]

RECORD_FILE = "embedkit.json"  # beside the shard: fingerprint, probes, vector config
SHARD_DIR = "shard"
_RECORD_FORMAT = 1
INDEX_TYPES = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
}
# embedkit's own fields the sink filters on: doc_id and source (keyword), chunk_index (delete_surplus' range)
_OWN_INDEXES = {DOC_ID: "keyword", SOURCE: "keyword", CHUNK_INDEX: "integer"}
_REFUSED_CHARACTERS = '/\\:*?"<>|\0'


class _Handle:
    """One open shard and the lock its calls take."""

    def __init__(self, shard: Any) -> None:
        self.shard = shard
        self.lock = threading.RLock()
        self.closed = False

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            try:
                self.shard.flush()
            finally:
                self.shard.close()


_shards: dict[str, _Handle] = {}
_shards_lock = threading.Lock()


def _open(shard_dir: Path, create: qe.EdgeConfig | None = None) -> _Handle:
    """The one open shard at `shard_dir` in this process: loaded on first use, or created with `create`."""
    key = str(shard_dir)
    with _shards_lock:
        handle = _shards.get(key)
        if handle is not None and not handle.closed:
            return handle
        try:
            shard = qe.EdgeShard.create(key, create) if create is not None else qe.EdgeShard.load(key)
        except Exception as exc:
            if "WouldBlock" in str(exc):
                raise StoreError(
                    f"the embedded Qdrant store at {shard_dir.parent.parent} is in use by another process "
                    f"(collection {shard_dir.parent.name!r}: {exc}); stop it, or use a Qdrant server "
                    "(--qdrant-url) for concurrent writers"
                ) from exc
            raise StoreError(f"cannot open the Qdrant Edge shard at {shard_dir}: {exc}") from exc
        _shards[key] = handle = _Handle(shard)
        return handle


@atexit.register
def _close_shards() -> None:
    """Flush and close the shards still open at exit (the WAL would replay them anyway; this is quicker)."""
    with _shards_lock:
        opened = list(_shards.values())
        _shards.clear()
    for handle in opened:
        if handle.lock.acquire(timeout=10):  # a daemon thread still writing: leave it to the WAL
            try:
                handle.close()
            except Exception:  # nothing left to report to at exit
                pass
            finally:
                handle.lock.release()


def _write_atomically(path: Path, record: dict[str, Any]) -> None:
    """Write `record` as JSON at `path` so a reader sees the old file or the new one, never a part."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            json.dump(record, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600; the record is no secret, the shard's files are 0644
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def store_kind(path: str | Path) -> str | None:
    """What the folder `path` holds: "client-local" (qdrant-client's local mode: meta.json and collection/),
    "edge" (one or more `<collection>/embedkit.json` + `shard/`), None (missing or empty), or "other"."""
    root = Path(path)
    if not root.is_dir():
        return None
    if (root / "meta.json").is_file() and (root / "collection").is_dir():
        return "client-local"
    entries = [entry for entry in root.iterdir() if not entry.name.startswith(".")]
    if not entries:
        return None
    if any((entry / RECORD_FILE).is_file() or (entry / SHARD_DIR).is_dir() for entry in entries):
        return "edge"
    return "other"


def _check_name(collection: object, where: str) -> str:
    if not collection or not isinstance(collection, str):
        raise InputError("collection must be a non-empty string")
    refused = next((c for c in collection if c in _REFUSED_CHARACTERS or ord(c) < 32), None)
    reason = (
        f"cannot contain {refused!r}"
        if refused is not None
        else "cannot be '.' or '..'"
        if collection in (".", "..")
        else "must be at most 255 characters"
        if len(collection.encode()) > 255
        else None
    )
    if reason:
        shown = repr(collection) if len(collection) <= 60 else f"{collection[:40]!r}... ({len(collection)} characters)"
        raise InputError(f"collection name {shown} is refused by the Qdrant store at {where}: it {reason}")
    return collection


def _field_match(field: str, value: str) -> qe.FieldCondition:
    return qe.FieldCondition(field, match=qe.MatchValue(value))


def _match_value(value: str | int | bool) -> Any:
    # qdrant-edge-py 0.9.0 reads a Python bool as the integer 0 / 1 (MatchValue(True).value == 1), which finds
    # integers and misses stored booleans; numpy's bool is not an int and arrives as a boolean
    as_given: Any = np.bool_(value) if isinstance(value, bool) else value
    return qe.MatchValue(as_given)


def _doc_filter(doc_id: str, *extra: Any) -> qe.Filter:
    return qe.Filter(must=[_field_match(DOC_ID, doc_id), *extra])


def _scroller(request: qe.ScrollRequest) -> Callable[[Any], Any]:
    return lambda shard: shard.scroll(request)


def _has_field(field: str) -> qe.Filter:
    """Points where `field` holds a value (not missing, null or []), as QdrantSink's check reads them."""
    return qe.Filter(must_not=[qe.IsEmptyCondition(field)])


def edge_filter(condition: Any) -> Any:
    """The qdrant-edge form of a qdrant-client filter built by metadata_condition (Filter, FieldCondition with
    MatchValue / MatchAny / Range, IsEmptyCondition): one place decides what a filter means."""
    if isinstance(condition, models.Filter):

        def part(conditions: Any) -> list[Any] | None:
            if conditions is None:
                return None
            listed = conditions if isinstance(conditions, list) else [conditions]
            return [edge_filter(c) for c in listed]

        return qe.Filter(must=part(condition.must), should=part(condition.should), must_not=part(condition.must_not))
    if isinstance(condition, models.FieldCondition):
        match, bounds = condition.match, condition.range
        if isinstance(match, models.MatchValue):
            return qe.FieldCondition(condition.key, match=_match_value(match.value))
        if isinstance(match, models.MatchAny):
            return qe.FieldCondition(condition.key, match=qe.MatchAny(list(match.any)))  # type: ignore[arg-type]
        if isinstance(bounds, models.Range):
            return qe.FieldCondition(
                condition.key, range=qe.RangeFloat(gte=bounds.gte, gt=bounds.gt, lte=bounds.lte, lt=bounds.lt)
            )
    if isinstance(condition, models.IsEmptyCondition):
        return qe.IsEmptyCondition(condition.is_empty.key)
    raise TypeError(f"no Qdrant Edge form for filter condition {condition!r}")


class EdgeSink:
    """One collection written by embedkit into a Qdrant Edge shard under `path`: the same points, payloads
    and crash protocol as QdrantSink (cosine distance, one dense vector per point, unnamed or `vector_name`).

    Payload indexes: doc_id and source (keyword), chunk_index (integer), and `index_fields` {metadata key:
    "keyword" | "integer" | "float" | "bool"} as `metadata.KEY`. Searches use HNSW with `hnsw_ef` (None: the
    engine's default) or scan every vector when `exact`; both may be given per search too. The engine builds
    the HNSW index only when `optimize()` is called (see the module docstring): call it after a large ingest.
    `indexing_threshold_kb` (set when the shard is created) is the vector storage size below which a segment
    is not indexed.
    """

    def __init__(
        self,
        collection: str,
        *,
        path: str | Path,
        vector_name: str | None = None,
        batch_size: int = 256,
        index_fields: Mapping[str, str] | None = None,
        hnsw_ef: int | None = None,
        exact: bool = False,
        indexing_threshold_kb: int | None = None,
    ) -> None:
        root = Path(path).resolve()
        self.collection = _check_name(collection, str(root))
        self.vector_name = vector_name
        self.batch_size = batch_size
        self.hnsw_ef = hnsw_ef
        self.exact = exact
        self.indexing_threshold_kb = indexing_threshold_kb
        self.index_fields = dict(index_fields or {})
        for key, kind in self.index_fields.items():
            if kind not in INDEX_TYPES:
                raise InputError(f"index field {key!r}: type {kind!r} is not one of {', '.join(INDEX_TYPES)}")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot open the embedded Qdrant store at {root}: {unusable_reason(str(root), exc)}"
            ) from exc
        if store_kind(root) == "client-local":
            raise StoreError(
                f"{root} holds a qdrant-client local-mode store (meta.json, collection/), not Qdrant Edge "
                "collections: open it with QdrantSink(path=...), or give EdgeSink another path (nothing is "
                "converted silently)"
            )
        self._where = str(root)
        self._dir = root / collection
        self._shard_dir = self._dir / SHARD_DIR
        self._record_path = self._dir / RECORD_FILE
        self._handle: _Handle | None = None
        self._closed = False
        if self.exists():
            self._shard()  # the store in use by another process is an error now, not at the first write

    # -- lifecycle -----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Flush and close the shard; calling it again does nothing. Sinks of the same collection in this
        process share the shard, so this closes it for them too (they reopen it on their next call). After
        close, every store operation of this sink raises StoreError."""
        if self._closed:
            return
        self._closed = True
        handle, self._handle = self._handle, None
        if handle is None:
            return
        with _shards_lock:
            if _shards.get(str(self._shard_dir)) is handle:
                del _shards[str(self._shard_dir)]
        try:
            handle.close()
        except Exception as exc:
            raise StoreError(f"closing the Qdrant Edge shard of {self.collection!r} failed: {exc}") from exc

    def __enter__(self) -> EdgeSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EdgeSink(collection={self.collection!r}, at={self._where!r})"

    @property
    def shard(self) -> Any:
        """The open qdrant_edge.EdgeShard underneath (for direct queries); StoreError if there is none."""
        return self._shard().shard

    def _shard(self, create: qe.EdgeConfig | None = None) -> _Handle:
        if self._closed:
            raise StoreError(
                f"the EdgeSink of collection {self.collection!r} at {self._where} is closed; open a new one"
            )
        if self._handle is None or self._handle.closed:
            if create is None and not self._shard_dir.is_dir():
                raise StoreError(f"collection {self.collection!r} does not exist at {self._where}")
            self._handle = _open(self._shard_dir, create)
        return self._handle

    def _call(self, name: str, operation: Callable[[Any], Any]) -> Any:
        """`operation(shard)` under the shard's lock; the engine's errors (plain Exception) become StoreError."""
        handle = self._shard()
        with handle.lock:
            try:
                return operation(handle.shard)
            except StoreError:
                raise
            except Exception as exc:
                if type(exc) is not Exception and not isinstance(exc, OSError):
                    raise  # a bug of ours (TypeError, ...), not the store's
                raise StoreError(f"{name} on {self.collection!r} at {self._where} failed: {exc}") from exc

    def _update(self, name: str, operation: Any) -> None:
        self._call(name, lambda shard: shard.update(operation))

    # -- the record beside the shard -----------------------------------------------------------------------

    def _record(self) -> dict[str, Any] | None:
        try:
            text = self._record_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self._record_path}: {exc}") from exc
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise StoreError(f"{self._record_path} is not embedkit's collection record: {exc}") from exc
        if not isinstance(record, dict) or not isinstance(record.get("vectors"), dict):
            raise StoreError(f"{self._record_path} is not embedkit's collection record")
        return record

    def exists(self) -> bool:
        if self._closed:
            self._shard()  # raises: closed
        return self._record_path.is_file() and self._shard_dir.is_dir()

    def recorded_fingerprint(self) -> dict[str, Any] | None:
        record = self._record() if self.exists() else None
        return record.get("fingerprint") if record else None

    def recorded_probes(self) -> dict[str, Any] | None:
        record = self._record() if self.exists() else None
        return record.get("probes") if record else None

    def prepare(
        self,
        dimension: int,
        fingerprint: dict[str, Any],
        *,
        probes: dict[str, Any] | None = None,
        rewrite: bool = False,
    ) -> None:
        """Create the collection (shard, payload indexes, then the record) for `dimension`-d cosine vectors, or
        check that the existing one holds such vectors (StoreError naming both when not); `rewrite` records
        `fingerprint` and `probes` over the existing record."""
        record = self._record() if self.exists() else None
        if record is None:
            self._create(dimension)
            record = {
                "format": _RECORD_FORMAT,
                "vectors": {self.vector_name or "": {"size": dimension, "distance": "Cosine"}},
            }
            rewrite = True
        else:
            self._check_vectors(record, dimension)
        self._ensure_indexes()
        if rewrite:
            self._write_record({**record, "fingerprint": fingerprint, "probes": probes})

    def _create(self, dimension: int) -> None:
        if self._shard_dir.exists():
            # a shard without a record: a run stopped inside prepare, before anything was written to it
            handle = self._shard()
            count = self._call("count", lambda shard: shard.count(qe.CountRequest(exact=True)))
            if count:
                raise StoreError(
                    f"{self._shard_dir} holds {count} points but no {RECORD_FILE}: not a collection embedkit "
                    "made; move it away or use another collection"
                )
            with _shards_lock:
                _shards.pop(str(self._shard_dir), None)
            handle.close()
            self._handle = None
            shutil.rmtree(self._shard_dir)
        params = qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)
        optimizers = (
            qe.EdgeOptimizersConfig(indexing_threshold=self.indexing_threshold_kb)
            if self.indexing_threshold_kb is not None
            else None
        )
        config = qe.EdgeConfig(
            vectors={self.vector_name: params} if self.vector_name else params, optimizers=optimizers
        )
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self._dir}: {unusable_reason(str(self._dir), exc)}") from exc
        self._shard(create=config)

    def _check_vectors(self, record: dict[str, Any], dimension: int) -> None:
        vectors = record["vectors"]
        if self.vector_name:
            if self.vector_name not in vectors:
                names = sorted(vectors) if "" not in vectors else "one unnamed vector"
                raise StoreError(f"collection {self.collection!r} has no vector named {self.vector_name!r} ({names})")
            params = vectors[self.vector_name]
        elif "" not in vectors:
            raise StoreError(
                f"collection {self.collection!r} uses named vectors ({sorted(vectors)}); pass vector_name="
            )
        else:
            params = vectors[""]
        if params.get("size") != dimension or params.get("distance") != "Cosine":
            raise StoreError(
                f"collection {self.collection!r} holds {params.get('size')}-d vectors with "
                f"{str(params.get('distance')).lower()} distance; this embedder gives {dimension}-d vectors for "
                "cosine distance. Use another collection."
            )

    def _ensure_indexes(self) -> None:
        wanted = {**_OWN_INDEXES, **{f"{METADATA}.{key}": kind for key, kind in self.index_fields.items()}}
        have = self._call("info", lambda shard: shard.info()).payload_schema
        for field, kind in wanted.items():
            if field not in have:
                self._update("create_field_index", qe.UpdateOperation.create_field_index(field, INDEX_TYPES[kind]))

    def _write_record(self, record: dict[str, Any]) -> None:
        self._call("flush", lambda shard: shard.flush())
        try:
            _write_atomically(self._record_path, record)
        except OSError as exc:
            raise StoreError(f"cannot write {self._record_path}: {exc}") from exc

    def optimize(self) -> bool:
        """Build the HNSW index (and merge, vacuum) now, in this thread; True if anything was done.

        Qdrant Edge runs no optimiser in the background: vectors stay unindexed (searched by a full scan,
        exact but slower as the collection grows) until this is called. Segments under the indexing
        threshold (`indexing_threshold_kb`, the engine's default when None) are left as they are."""
        return bool(self._call("optimize", lambda shard: shard.optimize()))

    def indexed_vectors(self) -> int:
        """How many vectors the HNSW index holds (0 until `optimize` has built one)."""
        return int(self._call("info", lambda shard: shard.info()).indexed_vectors_count)

    def payload_indexes(self) -> dict[str, str]:
        """The shard's payload indexes: field -> type name (for inspection)."""
        schema = self._call("info", lambda shard: shard.info()).payload_schema
        return {field: str(info.data_type).rsplit(".", 1)[-1].lower() for field, info in schema.items()}

    # -- points --------------------------------------------------------------------------------------------

    def count(self) -> int:
        if not self.exists():
            return 0
        return int(self._call("count", lambda shard: shard.count(qe.CountRequest(exact=True))))

    def upsert(self, points: Sequence[Point]) -> None:
        for start in range(0, len(points), self.batch_size):
            batch = [qe.Point(p.id, self._vector(p.vector), p.payload) for p in points[start : start + self.batch_size]]
            self._update("upsert", qe.UpdateOperation.upsert_points(batch))

    def _vector(self, vector: Sequence[float]) -> Any:
        values = vector.tolist() if hasattr(vector, "tolist") else [float(x) for x in vector]
        return {self.vector_name: values} if self.vector_name else values

    def _payloads(self, fields: list[str], scroll_filter: qe.Filter | None = None) -> Iterator[dict[str, Any]]:
        """The listed payload fields of every point (matching `scroll_filter`), page by page."""
        offset = None
        while True:
            request = qe.ScrollRequest(
                offset=offset, limit=1024, filter=scroll_filter, with_payload=fields, with_vector=False
            )
            records, offset = self._call("scroll", _scroller(request))
            for record in records:
                yield dict(record.payload or {})
            if offset is None:
                return

    def hashed_points(self, doc_ids: Collection[str] | None = None) -> Iterator[tuple[str, str, int]]:
        """(doc_id, content_hash, chunk_count) of every point that carries a content hash (of the docs
        `doc_ids` when given), page by page; see QdrantSink.hashed_points."""
        hashed = qe.Filter(
            must=[qe.FieldCondition(DOC_ID, match=qe.MatchAny(list(doc_ids)))] if doc_ids is not None else None,
            must_not=[qe.IsEmptyCondition(CONTENT_HASH)],
        )
        for payload in self._payloads([DOC_ID, CONTENT_HASH, CHUNK_COUNT], hashed):
            doc_id, count = payload.get(DOC_ID), payload.get(CHUNK_COUNT)
            if isinstance(doc_id, str) and isinstance(count, int):  # another tool's point may share a field name
                yield doc_id, str(payload[CONTENT_HASH]), count

    def delete_surplus(self, doc_id: str, keep: int) -> int:
        surplus = _doc_filter(doc_id, qe.FieldCondition(CHUNK_INDEX, range=qe.RangeFloat(gte=keep)))
        count = int(self._call("count", lambda shard: shard.count(qe.CountRequest(exact=True, filter=surplus))))
        if count:
            self._update("delete", qe.UpdateOperation.delete_points_by_filter(surplus))
        return count

    def mark_complete(self, doc_id: str, content_hash: str) -> None:
        self._update(
            "set_payload", qe.UpdateOperation.set_payload_by_filter(_doc_filter(doc_id), {CONTENT_HASH: content_hash})
        )

    def delete_missing(self, sources: Collection[str], keep: Callable[[str], bool]) -> tuple[int, int]:
        """Delete the docs of `sources` for which `keep(doc_id)` is false; returns (docs, points) removed.
        Only points with embedkit's doc_id and source are considered; nothing is deleted until every doc of
        the sources has been listed."""
        if not sources:
            return 0, 0
        theirs = qe.Filter(must=[qe.FieldCondition(SOURCE, match=qe.MatchAny(sorted(sources)))])
        missing: dict[str, int] = {}
        for payload in self._payloads([DOC_ID, SOURCE], theirs):
            doc_id = payload.get(DOC_ID)
            if isinstance(doc_id, str) and payload.get(SOURCE) in sources and not keep(doc_id):
                missing[doc_id] = missing.get(doc_id, 0) + 1
        for doc_id in missing:
            self._update("delete", qe.UpdateOperation.delete_points_by_filter(_doc_filter(doc_id)))
        return len(missing), sum(missing.values())

    # -- search --------------------------------------------------------------------------------------------

    def search(
        self,
        vector: Sequence[float],
        k: int,
        *,
        metadata_filter: Mapping[str, Any] | None = None,
        score_threshold: float | None = None,
        hnsw_ef: int | None = None,
        exact: bool | None = None,
    ) -> list[SearchHit]:
        """The `k` nearest chunks, best first; `score_threshold` drops weaker hits; `metadata_filter` as
        QdrantSink.search reads it (embedkit.sinks.qdrant.metadata_condition), with the same errors.
        `hnsw_ef` and `exact` override the sink's for this search."""
        if not self.exists():
            raise StoreError(f"collection {self.collection!r} does not exist at {self._where}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be an int >= 1, got {k!r}")
        condition = metadata_condition(metadata_filter)
        values = vector.tolist() if hasattr(vector, "tolist") else [float(x) for x in vector]
        request = qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(values, using=self.vector_name),
            filter=edge_filter(condition) if condition is not None else None,
            score_threshold=score_threshold,
            params=qe.SearchParams(
                hnsw_ef=self.hnsw_ef if hnsw_ef is None else hnsw_ef, exact=self.exact if exact is None else exact
            ),
            with_payload=True,
        )
        points = self._call("query", lambda shard: shard.query(request))
        if not points and condition is not None and metadata_filter:
            self._check_keys_exist(list(metadata_filter))
        return [SearchHit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def _check_keys_exist(self, keys: list[str]) -> None:
        """InputError naming the filter keys no point has (as QdrantSink does); an empty collection passes."""
        if not self._any_point(None):
            return
        missing = [key for key in keys if not any(self._any_point(_has_field(field)) for field in payload_fields(key))]
        if not missing:
            return
        described = ", ".join(
            f"field {key!r}"
            if key in OWN_FIELDS
            else f"metadata key {payload_fields(key)[0].removeprefix(METADATA + '.')!r}"
            for key in missing
        )
        records, offset = self._call(
            "scroll", lambda shard: shard.scroll(qe.ScrollRequest(limit=256, with_payload=[METADATA]))
        )
        seen: set[str] = set()
        for record in records:
            metadata = (record.payload or {}).get(METADATA)
            if isinstance(metadata, dict):
                seen.update(str(key) for key in metadata)
        listing = ", ".join([*sorted(seen), "..."] if offset is not None else sorted(seen)) or "none"
        raise InputError(f"no point in collection {self.collection!r} has {described} (keys seen: {listing})")

    def _any_point(self, scroll_filter: qe.Filter | None) -> bool:
        request = qe.ScrollRequest(limit=1, filter=scroll_filter, with_payload=False, with_vector=False)
        records, _ = self._call("scroll", lambda shard: shard.scroll(request))
        return bool(records)
