"""The Qdrant Edge engine of QdrantSink: Qdrant's own engine in-process (`qdrant-edge-py`), one shard per collection.

Layout under the store path: `<path>/<collection>/shard/` is the Edge shard, `<path>/<collection>/embedkit.json`
records what a server keeps as collection config and metadata (the vector names, sizes and distances; the
metadata with the embedder fingerprint and the probe vectors).

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe
from qdrant_client import models

from embedkit.errors import InputError, StoreError
from embedkit.sinks.base import Point, SearchHit
from embedkit.sinks.qdrant import QdrantSink, Query, SparseConfig, StoredPoint, VectorConfig, unusable_reason
from embedkit.sparse.base import SparseVector

__all__ = ["RECORD_FILE", "SHARD_DIR", "EdgeSink", "collections_at", "edge_filter", "store_kind"]

RECORD_FILE = "embedkit.json"  # beside the shard: vector config and collection metadata
SHARD_DIR = "shard"
_RECORD_FORMAT = 1
_INDEX_SCHEMAS = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
}
_DISTANCES = {"Cosine": qe.Distance.Cosine, "Dot": qe.Distance.Dot, "Euclid": qe.Distance.Euclid}
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


def _forget(shard_dir: Path, handle: _Handle) -> None:
    with _shards_lock:
        if _shards.get(str(shard_dir)) is handle:
            del _shards[str(shard_dir)]


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
    """What the folder `path` holds: "client-local" (qdrant-client's local mode: meta.json, collection/),
    "edge" (one or more `<collection>/embedkit.json` + `shard/`), None (missing or empty), or "other"."""
    root = Path(path)
    if not root.is_dir():
        return None
    if (root / "meta.json").is_file():  # qdrant-client writes it on opening; an Edge store has none at its root
        return "client-local"
    entries = [entry for entry in root.iterdir() if not entry.name.startswith(".")]
    if not entries:
        return None
    if any((entry / RECORD_FILE).is_file() or (entry / SHARD_DIR).is_dir() for entry in entries):
        return "edge"
    return "other"


def collections_at(path: str | Path) -> list[str]:
    """The names of the Edge collections under `path`, sorted (those with a record beside their shard)."""
    root = Path(path)
    if not root.is_dir():
        return []
    return sorted(
        entry.name for entry in root.iterdir() if (entry / RECORD_FILE).is_file() and (entry / SHARD_DIR).is_dir()
    )


def _check_name(collection: str, where: str) -> str:
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


def _scroller(request: qe.ScrollRequest) -> Callable[[Any], Any]:
    return lambda shard: shard.scroll(request)


def _ours(vector: Any) -> Any:
    """A stored vector (list, or {name: list | qe.SparseVector}) with embedkit's SparseVector inside."""
    if isinstance(vector, dict):
        return {name: _ours(value) for name, value in vector.items()}
    if isinstance(vector, qe.SparseVector):
        return SparseVector(list(vector.indices), [float(v) for v in vector.values])
    return vector


def _theirs(vector: Any) -> Any:
    """The qdrant-edge form of a vector as QdrantSink builds them."""
    if isinstance(vector, dict):
        return {name: _theirs(value) for name, value in vector.items()}
    if isinstance(vector, SparseVector):
        return qe.SparseVector(vector.indices, vector.values)
    return vector


def _match_value(value: str | int | bool) -> Any:
    # qdrant-edge-py 0.9.0 reads a Python bool as the integer 0 / 1 (MatchValue(True).value == 1), which finds
    # integers and misses stored booleans; numpy's bool is not an int and arrives as a boolean
    as_given: Any = np.bool_(value) if isinstance(value, bool) else value
    return qe.MatchValue(as_given)


def edge_filter(condition: Any) -> Any:
    """The qdrant-edge form of a qdrant-client filter as embedkit.sinks builds them (Filter, FieldCondition
    with MatchValue / MatchAny / Range, IsEmptyCondition): one place decides what a filter means."""
    if condition is None:
        return None
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
    if isinstance(condition, models.HasVectorCondition):
        return qe.HasVectorCondition(condition.has_vector)
    raise TypeError(f"no Qdrant Edge form for filter condition {condition!r}")


class EdgeSink(QdrantSink):
    """QdrantSink on a Qdrant Edge shard under `path` (see embedkit.sinks.qdrant.QdrantSink for the arguments).

    The engine builds the HNSW index only when `optimize()` is called (see the module docstring); ingest
    calls it at the end of a run. Until then a search scans every vector, exactly.
    """

    engine = "edge"

    def _connect(
        self,
        *,
        path: str | Path | None,
        url: str | None,
        api_key: str | None,
        location: str | None,
        client: Any,
        indexing_threshold_kb: int | None,
    ) -> None:
        if path is None or url or location or client is not None:
            raise InputError("the Qdrant Edge engine is the embedded store of a path: give path= alone")
        root = Path(path).resolve()
        _check_name(self.collection, str(root))
        self.indexing_threshold_kb = indexing_threshold_kb
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot open the embedded Qdrant store at {root}: {unusable_reason(str(root), exc)}"
            ) from exc
        if store_kind(root) == "client-local":
            raise StoreError(
                f"{root} holds a qdrant-client local-mode store (meta.json, collection/), not Qdrant Edge "
                "collections: open it with engine='client-local', or convert it with `embedkit collections "
                "convert` (nothing is converted silently)"
            )
        self._where = str(root)
        self._dir = root / self.collection
        self._shard_dir = self._dir / SHARD_DIR
        self._record_path = self._dir / RECORD_FILE
        self._handle: _Handle | None = None
        self._recover()
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
        _forget(self._shard_dir, handle)
        try:
            handle.close()
        except Exception as exc:
            raise StoreError(f"closing the Qdrant Edge shard of {self.collection!r} failed: {exc}") from exc

    @property
    def shard(self) -> Any:
        """The open qdrant_edge.EdgeShard underneath (for direct queries); StoreError if there is none."""
        return self._shard().shard

    def _shard(self, create: qe.EdgeConfig | None = None) -> _Handle:
        if self._closed:
            raise StoreError(
                f"the QdrantSink of collection {self.collection!r} at {self._where} is closed; open a new one"
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

    def collection_names(self) -> list[str]:
        return collections_at(self._where)

    def drop(self) -> None:
        """Delete the collection: its record first (so it no longer exists), then the shard's folder."""
        handle, self._handle = self._handle, None
        if handle is not None:
            _forget(self._shard_dir, handle)
            handle.close()
        self._record_path.unlink(missing_ok=True)
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- the record beside the shard -----------------------------------------------------------------------

    def _record(self) -> dict[str, Any]:
        try:
            text = self._record_path.read_text(encoding="utf-8")
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

    def _metadata(self) -> dict[str, Any]:
        return dict(self._record().get("metadata") or {})

    def _write_metadata(self, metadata: dict[str, Any]) -> None:
        self._write_record({**self._record(), "metadata": metadata})

    def vectors(self) -> dict[str, VectorConfig]:
        return {
            name: VectorConfig(int(params["size"]), str(params["distance"]), bool(params.get("multivector", False)))
            for name, params in self._record()["vectors"].items()
        }

    def sparse_vectors(self) -> dict[str, SparseConfig]:
        return {
            name: SparseConfig(params.get("modifier"))
            for name, params in self._record().get("sparse_vectors", {}).items()
        }

    def _config(self, vectors: dict[str, VectorConfig], sparse: dict[str, SparseConfig]) -> qe.EdgeConfig:
        unknown = [c.distance for c in vectors.values() if c.distance not in _DISTANCES]
        if unknown:
            raise StoreError(f"Qdrant Edge has no {unknown[0]} distance (it has {', '.join(_DISTANCES)})")
        params = {
            name: qe.EdgeVectorParams(size=c.size, distance=_DISTANCES[c.distance], **_multivector_params(c))
            for name, c in vectors.items()
        }
        optimizers = (
            qe.EdgeOptimizersConfig(indexing_threshold=self.indexing_threshold_kb)
            if self.indexing_threshold_kb is not None
            else None
        )
        sparse_params = {
            name: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf if c.modifier == "idf" else None)
            for name, c in sparse.items()
        }
        return qe.EdgeConfig(
            vectors=params[""] if set(params) == {""} else params,
            sparse_vectors=sparse_params or None,
            optimizers=optimizers,
        )

    @staticmethod
    def _vector_record(vectors: dict[str, VectorConfig], sparse: dict[str, SparseConfig]) -> dict[str, Any]:
        return {
            "vectors": {
                name: {"size": c.size, "distance": c.distance, **({"multivector": True} if c.multivector else {})}
                for name, c in vectors.items()
            },
            "sparse_vectors": {name: {"modifier": c.modifier} for name, c in sparse.items()},
        }

    def _create(
        self, vectors: dict[str, VectorConfig], sparse: dict[str, SparseConfig], metadata: dict[str, Any]
    ) -> None:
        """Make the shard and write the record last: the collection exists once its record does."""
        if self._shard_dir.exists():
            self._remove_empty_shard()
        config = self._config(vectors, sparse)
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self._dir}: {unusable_reason(str(self._dir), exc)}") from exc
        self._shard(create=config)
        self.ensure_indexes()
        self._write_record({"format": _RECORD_FORMAT, **self._vector_record(vectors, sparse), "metadata": metadata})

    def _add_sparse(self, name: str, config: SparseConfig) -> None:
        """A shard's vectors are fixed when it is made, so the collection is copied into a new shard that has
        the sparse vector (`shard.next`, points without it), which then takes the old one's place: renamed to
        `shard.prev`, the new one to `shard`, the record rewritten, the old one removed. A run stopped at any
        step leaves the old shard in place or the new one complete (`_recover` finishes the swap)."""
        vectors, sparse = self.vectors(), {**self.sparse_vectors(), name: config}
        building = self._dir / f"{SHARD_DIR}.next"
        shutil.rmtree(building, ignore_errors=True)
        try:
            target = qe.EdgeShard.create(str(building), self._config(vectors, sparse))
            for field, kind in self.payload_indexes().items():
                if kind in _INDEX_SCHEMAS:
                    target.update(qe.UpdateOperation.create_field_index(field, _INDEX_SCHEMAS[kind]))
            offset = None
            while True:
                request = qe.ScrollRequest(offset=offset, limit=512, with_payload=True, with_vector=True)
                records, offset = self._call("scroll", _scroller(request))
                if records:
                    target.update(
                        qe.UpdateOperation.upsert_points([qe.Point(r.id, r.vector, r.payload) for r in records])
                    )
                if offset is None:
                    break
            target.flush()
            target.close()
        except Exception as exc:
            if type(exc) is not Exception:
                raise
            raise StoreError(
                f"adding sparse vector {name!r} to {self.collection!r} at {self._where} failed: {exc}"
            ) from exc
        handle, self._handle = self._handle, None
        if handle is not None:
            _forget(self._shard_dir, handle)
            handle.close()
        previous = self._dir / f"{SHARD_DIR}.prev"
        os.rename(self._shard_dir, previous)
        os.rename(building, self._shard_dir)
        self._write_record({**self._record(), **self._vector_record(vectors, sparse)})
        shutil.rmtree(previous)

    def _recover(self) -> None:
        """Finish or undo a sparse-vector swap a stopped run left (see `_add_sparse`)."""
        previous = self._dir / f"{SHARD_DIR}.prev"
        if previous.is_dir():
            if self._shard_dir.is_dir():
                shutil.rmtree(previous)  # the new shard is in place; the record may still be the old one's
            else:
                os.rename(previous, self._shard_dir)  # stopped between the renames: the old shard comes back

    def _clear_sparse(self) -> None:
        self._update(
            "delete_vectors", qe.UpdateOperation.delete_vectors_by_filter(qe.Filter(), [self.sparse_vector_name])
        )

    def _set_sparse(self, vectors: list[tuple[str, SparseVector]]) -> None:
        points = [qe.PointVectors(pid, {self.sparse_vector_name: _theirs(v)}) for pid, v in vectors]
        self._update("update_vectors", qe.UpdateOperation.update_vectors(points))

    def _remove_empty_shard(self) -> None:
        """A shard without a record is what a run stopped inside `_create` leaves: empty, so made again."""
        handle = self._shard()
        count = self._call("count", lambda shard: shard.count(qe.CountRequest(exact=True)))
        if count:
            raise StoreError(
                f"{self._shard_dir} holds {count} points but no {RECORD_FILE}: not a collection embedkit "
                "made; move it away or use another collection"
            )
        _forget(self._shard_dir, handle)
        handle.close()
        self._handle = None
        shutil.rmtree(self._shard_dir)

    def _write_record(self, record: dict[str, Any]) -> None:
        self._call("flush", lambda shard: shard.flush())
        try:
            _write_atomically(self._record_path, record)
        except OSError as exc:
            raise StoreError(f"cannot write {self._record_path}: {exc}") from exc

    # -- indexes -------------------------------------------------------------------------------------------

    def payload_indexes(self) -> dict[str, str]:
        schema = self._call("info", lambda shard: shard.info()).payload_schema
        return {field: str(info.data_type).rsplit(".", 1)[-1].lower() for field, info in schema.items()}

    def _create_index(self, field: str, kind: str) -> None:
        self._update("create_field_index", qe.UpdateOperation.create_field_index(field, _INDEX_SCHEMAS[kind]))

    def optimize(self) -> bool:
        """Build the HNSW index (and merge, vacuum) now, in this thread; True if anything was done.

        Qdrant Edge runs no optimiser in the background: vectors stay unindexed (searched by a full scan,
        exact but slower as the collection grows) until this is called. Segments under the indexing
        threshold (`indexing_threshold_kb`, the engine's default when None) are left as they are."""
        return bool(self._call("optimize", lambda shard: shard.optimize()))

    def indexed_vectors(self) -> int:
        """How many vectors the HNSW index holds (0 until `optimize` has built one)."""
        return int(self._call("info", lambda shard: shard.info()).indexed_vectors_count)

    # -- the engine operations QdrantSink builds on --------------------------------------------------------

    def _scroll(
        self, scroll_filter: models.Filter | None, fields: list[str] | bool, limit: int, offset: Any, vectors: bool
    ) -> tuple[list[StoredPoint], Any]:
        request = qe.ScrollRequest(
            offset=offset, limit=limit, filter=edge_filter(scroll_filter), with_payload=fields, with_vector=vectors
        )
        records, next_offset = self._call("scroll", lambda shard: shard.scroll(request))
        page = [StoredPoint(str(r.id), dict(r.payload or {}), _ours(r.vector) if vectors else None) for r in records]
        # the engine hands UUID ids back as uuid.UUID and takes them as strings: keep offsets JSON-friendly
        return page, None if next_offset is None else str(next_offset)

    def _count(self, count_filter: models.Filter | None) -> int:
        request = qe.CountRequest(exact=True, filter=edge_filter(count_filter))
        return int(self._call("count", lambda shard: shard.count(request)))

    def _delete(self, selector: models.Filter) -> None:
        self._update("delete", qe.UpdateOperation.delete_points_by_filter(edge_filter(selector)))

    def _set_payload(self, selector: models.Filter, payload: dict[str, Any]) -> None:
        self._update("set_payload", qe.UpdateOperation.set_payload_by_filter(edge_filter(selector), payload))

    def _upsert(self, points: list[Point] | list[StoredPoint]) -> None:
        batch = [
            qe.Point(p.id, _theirs(p.vector if isinstance(p, StoredPoint) else self._vectors(p)), p.payload)
            for p in points
        ]
        self._update("upsert", qe.UpdateOperation.upsert_points(batch))

    def _query(self, query: Query) -> list[SearchHit]:
        params = qe.SearchParams(hnsw_ef=query.params.hnsw_ef, exact=bool(query.params.exact))
        where = edge_filter(query.filter)
        if query.multivector is not None:
            # the search as one prefetch of `fetch_k` candidates, reordered by MaxSim over the multivectors
            first = self._first_stage(query, params, where)
            rerank = qe.Query.Nearest(query.multivector, using=self.multivector_name)
            request = qe.QueryRequest(limit=query.k, prefetches=[first], query=rerank, filter=where, with_payload=True)
        elif query.dense is not None and query.sparse is not None:
            branches = [
                qe.Prefetch(
                    query.fetch_k, qe.Query.Nearest(query.dense, using=self.vector_name), params=params, filter=where
                ),
                qe.Prefetch(
                    query.fetch_k, qe.Query.Nearest(_theirs(query.sparse), using=self.sparse_vector_name), filter=where
                ),
            ]
            fused: Any = (  # the stubs type Fusion.Rrf / Dbsf apart from the Fusion the request takes
                qe.Fusion.Rrf(k=query.rrf_k, weights=list(query.weights) if query.weights else None)
                if query.fusion == "rrf"
                else qe.Fusion.Dbsf()
            )
            request = qe.QueryRequest(
                limit=query.k, prefetches=branches, query=fused, filter=where,
                score_threshold=query.score_threshold, with_payload=True,
            )  # fmt: skip
        else:
            nearest = (
                qe.Query.Nearest(_theirs(query.sparse), using=self.sparse_vector_name)
                if query.sparse is not None
                else qe.Query.Nearest(query.dense or [], using=self.vector_name)
            )
            request = qe.QueryRequest(
                limit=query.k, query=nearest, filter=where, score_threshold=query.score_threshold, params=params,
                with_payload=True,
            )  # fmt: skip
        points = self._call("query", lambda shard: shard.query(request))
        return [SearchHit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def _first_stage(self, query: Query, params: Any, where: Any) -> Any:
        """The dense, sparse or fused search of `query` as a prefetch of its `fetch_k` best."""
        dense = qe.Query.Nearest(query.dense or [], using=self.vector_name)
        sparse = (
            qe.Query.Nearest(_theirs(query.sparse), using=self.sparse_vector_name) if query.sparse is not None else None
        )
        if query.dense is not None and sparse is not None:
            branches = [
                qe.Prefetch(query.fetch_k, dense, params=params, filter=where),
                qe.Prefetch(query.fetch_k, sparse, filter=where),
            ]
            fused: Any = (
                qe.Fusion.Rrf(k=query.rrf_k, weights=list(query.weights) if query.weights else None)
                if query.fusion == "rrf"
                else qe.Fusion.Dbsf()
            )
            return qe.Prefetch(query.fetch_k, fused, prefetches=branches, score_threshold=query.score_threshold)
        if sparse is not None:
            return qe.Prefetch(query.fetch_k, sparse, filter=where, score_threshold=query.score_threshold)
        return qe.Prefetch(query.fetch_k, dense, params=params, filter=where, score_threshold=query.score_threshold)


def _multivector_params(config: VectorConfig) -> dict[str, Any]:
    """A MaxSim multivector's extra parameters: the comparator, and no HNSW graph (m=0), since it only reranks
    candidates the other vectors found (as Qdrant advises for ColBERT vectors)."""
    if not config.multivector:
        return {}
    return {
        "multivector_config": qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
        "hnsw_config": qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
    }
