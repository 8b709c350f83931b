"""Qdrant sink over qdrant-client: a server (`url=`), the embedded local store (`path=`) or memory.

A local path can be opened by only one client at a time, so one client is shared per path
within a process.
"""

from __future__ import annotations

import atexit
import math
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import tenacity
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from embedkit.errors import InputError, StoreError
from embedkit.ingestion.records import CHUNK_COUNT, CHUNK_INDEX, CONTENT_HASH, DOC_ID, METADATA, SOURCE
from embedkit.sinks.base import Point, SearchHit

__all__ = ["FINGERPRINT_KEY", "OWN_FIELDS", "QdrantSink", "metadata_condition", "payload_fields", "unusable_reason"]

FINGERPRINT_KEY = "embedkit"  # collection metadata key holding the embedder fingerprint
PROBES_KEY = "embedkit_probes"  # ... and the probe texts' vectors that decide who may write (ingestion.records)

_local_clients: dict[str, tuple[QdrantClient, threading.RLock]] = {}
_local_lock = threading.Lock()


def _local_client(path: str) -> tuple[QdrantClient, threading.RLock]:
    """The one client of the embedded store at `path` in this process, opened on first use.

    Raises StoreError naming the path when the store cannot be opened: a file is there, the place is
    not writable (qdrant-client writes a lock file even to read), or another process holds it.
    """
    key = str(Path(path).resolve())
    with _local_lock:
        if key not in _local_clients:
            try:
                _local_clients[key] = (QdrantClient(path=key), threading.RLock())
            except RuntimeError as exc:  # qdrant-client: the folder is locked by another process
                raise StoreError(
                    f"the embedded Qdrant store at {key} is in use by another process ({exc}); "
                    "stop it, or use a Qdrant server (--qdrant-url) for concurrent writers"
                ) from exc
            except OSError as exc:  # qdrant-client creates the folder, meta.json and .lock as it opens
                raise StoreError(
                    f"cannot open the embedded Qdrant store at {key}: {unusable_reason(key, exc)}"
                ) from exc
        return _local_clients[key]


def unusable_reason(key: str, error: OSError) -> str:
    """Why the local store path `key` could not be opened, in the user's terms."""
    if isinstance(error, FileExistsError) and Path(key).is_file():
        return "it is a file, not a directory; give a directory (it is created if missing)"
    if isinstance(error, NotADirectoryError):
        blocking = next((parent for parent in Path(key).parents if parent.is_file()), error.filename)
        return f"{blocking} is a file, not a directory"
    reason = error.strerror or str(error)
    where = f" ({error.filename})" if error.filename and error.filename != key else ""
    if isinstance(error, PermissionError):
        return f"not writable{where}: {reason}; the store needs a directory it can write (even to search)"
    return f"{reason}{where}"


@atexit.register
def _close_local_clients() -> None:
    """Close the shared embedded clients while the interpreter can still import.

    qdrant-client's QdrantLocal.close imports portalocker lazily. A client still open when the interpreter
    tears its modules down (this registry holds one per path until then) is closed by
    QdrantClient.__del__, whose import then fails and prints 'Exception ignored in: QdrantClient.__del__
    ... ImportError: sys.meta_path is None' on every exit. atexit runs before that teardown; closing
    here leaves __del__ a closed client, which it closes again without importing.
    """
    with _local_lock:
        opened = list(_local_clients.values())
        _local_clients.clear()
    for client, lock in opened:
        # a daemon thread still writing holds the lock: leave its store to __del__ rather than hang the exit
        if lock.acquire(timeout=10):
            try:
                client.close()
            finally:
                lock.release()


class _Serialised:
    """Calls into an embedded (local / in-memory) Qdrant store one at a time.

    qdrant-client's local mode is not thread-safe: a count running while another thread upserts
    reads numpy arrays mid-resize (measured: 'operands could not be broadcast together with shapes
    (482,) (483,)'). ingest counts on one thread while its writer upserts on another, so every call
    takes the store's lock. A server needs none of this.
    """

    def __init__(self, client: QdrantClient, lock: threading.RLock) -> None:
        self._client = client
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attribute(*args, **kwargs)

        locked.__name__ = name
        return locked


class _Closed:
    """Stands in for the client of a closed sink: any call is a StoreError naming the sink, where
    qdrant-client would raise a RuntimeError (local) or reopen connections (server)."""

    def __init__(self, collection: str, where: str) -> None:
        self._message = f"the QdrantSink of collection {collection!r} at {where} is closed; open a new one"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # protocol probes (pickle, copy, hasattr of dunders) get the usual answer
            raise AttributeError(name)
        raise StoreError(self._message)


def _doc_filter(doc_id: str, *extra: models.Condition) -> models.Filter:
    return models.Filter(must=[models.FieldCondition(key=DOC_ID, match=models.MatchValue(value=doc_id)), *extra])


class QdrantSink:
    """One Qdrant collection written by embedkit: cosine distance, one vector per point (unnamed, or
    `vector_name`), payload `page_content` + `metadata` as langchain-qdrant reads them, plus doc_id,
    chunk_index, chunk_count, start, end, headings and content_hash (embedkit.ingestion.records.chunk_payload).

    Writes to a server are retried with exponential backoff on transient failures (connection errors,
    timeouts, 429, 502-504), `retry_attempts` times at most.
    """

    def __init__(
        self,
        collection: str,
        *,
        path: str | Path | None = None,
        url: str | None = None,
        api_key: str | None = None,
        location: str | None = None,
        client: QdrantClient | None = None,
        batch_size: int = 256,
        vector_name: str | None = None,
        retry_attempts: int = 5,
    ) -> None:
        given = [
            name for name, value in (("path", path), ("url", url), ("location", location), ("client", client)) if value
        ]
        if len(given) != 1:
            raise InputError(f"QdrantSink needs exactly one of path, url, location or client; got {given or 'none'}")
        if not collection or not isinstance(collection, str):
            raise InputError("collection must be a non-empty string")
        self.collection = collection
        self.batch_size = batch_size
        self.vector_name = vector_name
        self.retry_attempts = retry_attempts
        if client is not None:
            raw = client
            lock = threading.RLock()
        elif path is not None:
            raw, lock = _local_client(str(path))
        elif location is not None:
            raw, lock = QdrantClient(location=location), threading.RLock()
        else:
            # embedkit's own first call tells whether the server answers; qdrant-client's version probe
            # would only warn from a background thread
            raw, lock = QdrantClient(url=url, api_key=api_key, check_compatibility=False), threading.RLock()
        self._raw_client = raw
        # the embedded store ignores payload indexes (and warns); only a server gets them
        self._is_local = type(getattr(raw, "_client", None)).__name__ == "QdrantLocal"
        self._client: Any = _Serialised(raw, lock) if self._is_local else raw
        self._where = str(path or url or location or "client")
        self._owns_client = client is None
        self._local_key = str(Path(path).resolve()) if path is not None else None
        self._closed = False
        if self._is_local:
            self._check_new_name()

    def _check_new_name(self) -> None:
        """InputError now, naming the store, for a new collection name the embedded store would refuse.

        qdrant-client's local mode refuses names with / \\ : and a few more characters, or over 255
        characters, with a bare ValueError at create_collection (a server answers 422, which `_call`
        reports). Existing collections are not checked, as qdrant-client keeps them reachable.
        """
        validate = getattr(type(self._raw_client._client), "_validate_new_collection_name", None)
        if validate is None or self._client.collection_exists(self.collection):
            return
        try:
            validate(self.collection)
        except ValueError as exc:
            name = self.collection
            shown = repr(name) if len(name) <= 60 else f"{name[:40]!r}... ({len(name)} characters)"
            raise InputError(f"collection name {shown} is refused by the Qdrant store at {self._where}: {exc}") from exc

    def close(self) -> None:
        """Close the client if this sink opened it; calling it again does nothing.

        A local path's client is shared by every sink of that path in this process, so closing one
        closes it for all of them (and frees the path for another process). After close, every store
        operation of this sink raises StoreError. Clients still open when the interpreter exits are
        closed by an atexit hook, so a script that never closes ends quietly too.
        """
        if self._closed:
            return
        self._closed = True
        self._client = _Closed(self.collection, self._where)
        if not self._owns_client:
            return
        if self._local_key is not None:
            with _local_lock:
                # only this sink's client: the path may have been reopened by another sink since
                if _local_clients.get(self._local_key, (None,))[0] is self._raw_client:
                    del _local_clients[self._local_key]
        self._raw_client.close()

    def __enter__(self) -> QdrantSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"QdrantSink(collection={self.collection!r}, at={self._where!r})"

    @property
    def client(self) -> QdrantClient:
        """The qdrant-client underneath (for langchain-qdrant and direct queries)."""
        return self._raw_client

    def exists(self) -> bool:
        return bool(self._call(self._client.collection_exists, self.collection))

    def recorded_fingerprint(self) -> dict[str, Any] | None:
        if not self.exists():
            return None
        metadata = self._call(self._client.get_collection, self.collection).config.metadata or {}
        return metadata.get(FINGERPRINT_KEY)

    def recorded_probes(self) -> dict[str, Any] | None:
        """The probe texts and vectors the collection was created with (see embedkit.ingestion.records), if any."""
        if not self.exists():
            return None
        metadata = self._call(self._client.get_collection, self.collection).config.metadata or {}
        return metadata.get(PROBES_KEY)

    def prepare(
        self,
        dimension: int,
        fingerprint: dict[str, Any],
        *,
        probes: dict[str, Any] | None = None,
        rewrite: bool = False,
    ) -> None:
        """Create the collection for `dimension`-d cosine vectors recording `fingerprint` and `probes`, or
        check that the existing one holds such vectors (StoreError naming both when not); `rewrite`
        records `fingerprint` and `probes` over what an existing collection holds. Whether an embedder
        may write here is decided by the caller (embedkit.ingestion.records.open_collection)."""
        metadata = {FINGERPRINT_KEY: fingerprint, PROBES_KEY: probes}
        if not self.exists():
            params = models.VectorParams(size=dimension, distance=models.Distance.COSINE)
            self._call(
                self._client.create_collection,
                self.collection,
                vectors_config={self.vector_name: params} if self.vector_name else params,
                metadata=metadata,
            )
            if not self._is_local:
                for field in (DOC_ID, SOURCE):
                    self._call(
                        self._client.create_payload_index, self.collection, field, models.PayloadSchemaType.KEYWORD
                    )
            return
        params = self._call(self._client.get_collection, self.collection).config.params.vectors
        if self.vector_name:
            if not isinstance(params, dict) or self.vector_name not in params:
                names = sorted(params) if isinstance(params, dict) else "one unnamed vector"
                raise StoreError(f"collection {self.collection!r} has no vector named {self.vector_name!r} ({names})")
            params = params[self.vector_name]
        elif not isinstance(params, models.VectorParams):
            raise StoreError(
                f"collection {self.collection!r} uses named vectors ({sorted(params or {})}); pass vector_name="
            )
        if params.size != dimension or params.distance != models.Distance.COSINE:
            raise StoreError(
                f"collection {self.collection!r} holds {params.size}-d vectors with {params.distance.value} distance; "
                f"this embedder gives {dimension}-d vectors for cosine distance. Use another collection."
            )
        if rewrite:
            self._call(self._client.update_collection, self.collection, metadata=metadata)

    def hashed_points(self, doc_ids: Collection[str] | None = None) -> Iterator[tuple[str, str, int]]:
        """(doc_id, content_hash, chunk_count) of every point that carries a content hash (of the docs `doc_ids`
        when given), page by page.

        A doc is complete when exactly chunk_count of its points carry the same hash
        (embedkit.ingestion.records.Complete): the single-process run asks for a window of docs at a time,
        scale-out ingestion folds the whole collection into one compact snapshot.
        """
        hashed = models.Filter(
            must=[models.FieldCondition(key=DOC_ID, match=models.MatchAny(any=list(doc_ids)))]
            if doc_ids is not None
            else None,
            must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key=CONTENT_HASH))],
        )
        for payload in self._payloads([DOC_ID, CONTENT_HASH, CHUNK_COUNT], hashed):
            doc_id, count = payload.get(DOC_ID), payload.get(CHUNK_COUNT)
            if isinstance(doc_id, str) and isinstance(count, int):  # another tool's point may share a field name
                yield doc_id, str(payload[CONTENT_HASH]), count

    def _payloads(self, fields: list[str], scroll_filter: models.Filter | None = None) -> Iterator[dict[str, Any]]:
        """The listed payload fields of every point (matching `scroll_filter`), page by page."""
        offset = None
        while True:
            points, offset = self._call(
                self._client.scroll,
                self.collection,
                scroll_filter=scroll_filter,
                limit=1024,
                offset=offset,
                with_payload=fields,
                with_vectors=False,
            )
            for point in points:
                yield point.payload or {}
            if offset is None:
                return

    def upsert(self, points: Sequence[Point]) -> None:
        for start in range(0, len(points), self.batch_size):
            batch = points[start : start + self.batch_size]
            structs = [models.PointStruct(id=p.id, vector=self._vector(p.vector), payload=p.payload) for p in batch]
            self._call(self._client.upsert, self.collection, points=structs, wait=True)

    def _vector(self, vector: Sequence[float]) -> Any:
        values = [float(x) for x in vector]
        return {self.vector_name: values} if self.vector_name else values

    def _call(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        """One store operation, retried on transient failures; a final failure is a StoreError."""
        try:
            for attempt in tenacity.Retrying(
                stop=tenacity.stop_after_attempt(self.retry_attempts),
                wait=tenacity.wait_random_exponential(multiplier=0.5, max=8),
                retry=tenacity.retry_if_exception(_transient),
                reraise=True,
            ):
                with attempt:
                    return operation(*args, **kwargs)
        except (UnexpectedResponse, ResponseHandlingException, httpx.TransportError, OSError) as exc:
            # OSError: the embedded store's own files (a full disk, a vanished directory)
            raise StoreError(
                f"{getattr(operation, '__name__', 'operation')} on {self.collection!r} failed: {exc}"
            ) from exc

    def delete_missing(self, sources: Collection[str], keep: Callable[[str], bool]) -> tuple[int, int]:
        """Delete the docs of `sources` for which `keep(doc_id)` is false; returns (docs, points) removed.

        Only points embedkit wrote (with `doc_id` and `source`) are considered: points other tools wrote
        into the same collection are never touched. Deletes nothing until every doc has been listed.
        """
        if not sources:
            return 0, 0
        theirs = models.Filter(must=[models.FieldCondition(key=SOURCE, match=models.MatchAny(any=sorted(sources)))])
        missing: dict[str, int] = {}
        for payload in self._payloads([DOC_ID, SOURCE], theirs):
            doc_id = payload.get(DOC_ID)
            if isinstance(doc_id, str) and payload.get(SOURCE) in sources and not keep(doc_id):
                missing[doc_id] = missing.get(doc_id, 0) + 1
        for doc_id in missing:
            self._call(
                self._client.delete,
                self.collection,
                points_selector=models.FilterSelector(filter=_doc_filter(doc_id)),
                wait=True,
            )
        return len(missing), sum(missing.values())

    def delete_surplus(self, doc_id: str, keep: int) -> int:
        surplus = _doc_filter(doc_id, models.FieldCondition(key=CHUNK_INDEX, range=models.Range(gte=keep)))
        count = self._client.count(self.collection, count_filter=surplus, exact=True).count
        if count:
            self._call(
                self._client.delete, self.collection, points_selector=models.FilterSelector(filter=surplus), wait=True
            )
        return count

    def mark_complete(self, doc_id: str, content_hash: str) -> None:
        self._call(
            self._client.set_payload,
            self.collection,
            payload={CONTENT_HASH: content_hash},
            points=_doc_filter(doc_id),
            wait=True,
        )

    def count(self) -> int:
        return self._client.count(self.collection, exact=True).count

    def search(
        self,
        vector: Sequence[float],
        k: int,
        *,
        metadata_filter: Mapping[str, Any] | None = None,
        score_threshold: float | None = None,
    ) -> list[SearchHit]:
        """The `k` nearest chunks, best first; `score_threshold` drops weaker hits.

        `metadata_filter` keeps the chunks whose every key equals its value (see `metadata_condition`:
        `doc_id` and `source` are embedkit's own fields, any other key is a metadata key).
        Raises StoreError when the collection does not exist or the store fails, InputError for a bad
        `k` or filter, and InputError naming the keys when nothing matched because no point has them
        (a typo, rather than "no results").
        """
        if not self.exists():
            raise StoreError(f"collection {self.collection!r} does not exist at {self._where}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be an int >= 1, got {k!r}")
        condition = metadata_condition(metadata_filter)
        response = self._call(
            self._client.query_points,
            self.collection,
            query=[float(x) for x in vector],
            limit=k,
            query_filter=condition,
            using=self.vector_name,
            score_threshold=score_threshold,
            with_payload=True,
        )
        if not response.points and condition is not None and metadata_filter:
            self._check_keys_exist(list(metadata_filter))
        return [SearchHit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def _check_keys_exist(self, keys: list[str]) -> None:
        """InputError naming the filter keys that no point of the collection has; an empty collection has
        no keys to compare with, so it passes. One point is enough to tell, so each check asks for one."""
        if not self._any_point(None):
            return
        missing = [key for key in keys if not any(self._any_point(_has_field(field)) for field in payload_fields(key))]
        if not missing:
            return
        described = ", ".join(
            f"field {key!r}"
            if key in OWN_FIELDS
            else f"metadata key {payload_fields(key)[0].removeprefix('metadata.')!r}"
            for key in missing
        )
        seen, more = self._metadata_keys()
        listing = ", ".join([*seen, "..."] if more else seen) or "none"
        raise InputError(f"no point in collection {self.collection!r} has {described} (keys seen: {listing})")

    def _any_point(self, scroll_filter: models.Filter | None) -> bool:
        points, _ = self._call(
            self._client.scroll, self.collection, scroll_filter=scroll_filter, limit=1, with_payload=False
        )
        return bool(points)

    def _metadata_keys(self, sample: int = 256) -> tuple[list[str], bool]:
        """The metadata keys of the first `sample` points, sorted, and whether more points were left unread."""
        points, offset = self._call(
            self._client.scroll, self.collection, limit=sample, with_payload=[METADATA], with_vectors=False
        )
        keys: set[str] = set()
        for point in points:
            metadata = (point.payload or {}).get(METADATA)
            if isinstance(metadata, dict):
                keys.update(str(key) for key in metadata)
        return sorted(keys), offset is not None


def _transient(error: BaseException) -> bool:
    if isinstance(error, (ResponseHandlingException, httpx.TransportError)):
        return True
    return isinstance(error, UnexpectedResponse) and error.status_code in (429, 502, 503, 504)


OWN_FIELDS = (DOC_ID, SOURCE)  # embedkit's top-level payload fields, which a plain filter key also reaches


def metadata_condition(metadata_filter: Mapping[str, Any] | None) -> models.Filter | None:
    """A Qdrant filter keeping the points whose every key equals its value; None for no filter.

    Keys: a plain KEY is the metadata key KEY; `doc_id` and `source` also match embedkit's own top-level
    fields of that name (a point matches when either does: `source` is LangChain's usual metadata key
    too); `metadata.KEY` is the metadata key alone. Values match by type, as JSON stored them: a str
    only a string, an int only an integer, a bool only a boolean, a float any number equal to it.
    A list (or tuple, set) accepts any of its values, which may mix types: the CLI passes "2024" as
    ["2024", 2024] to find both. Raises InputError for a key that is not a non-empty str, or a value
    of another type (None, a dict, a nested list, nan).
    """
    if not metadata_filter:
        return None
    if not isinstance(metadata_filter, Mapping):
        raise InputError(f"metadata filter must be a mapping of key to value, got {type(metadata_filter).__name__}")
    conditions: list[models.Condition] = []
    for key, value in metadata_filter.items():
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        matches = [match for field in payload_fields(key) for match in _matches(field, key, values)]
        # MatchAny takes one type only, so a mixed key is a `should` of one condition per type
        conditions.append(matches[0] if len(matches) == 1 else models.Filter(should=matches))
    return models.Filter(must=conditions)


def payload_fields(key: object) -> list[str]:
    """The payload paths a filter key reaches: the metadata key, and for doc_id / source the top-level field."""
    if not isinstance(key, str) or not key:
        raise InputError(f"metadata filter keys must be non-empty strings, got {key!r}")
    if key.startswith("metadata."):
        if key == "metadata.":
            raise InputError("metadata filter key 'metadata.' names no key; write metadata.KEY")
        return [key]
    return [key, f"{METADATA}.{key}"] if key in OWN_FIELDS else [f"{METADATA}.{key}"]


def _matches(field: str, key: str, values: list[Any]) -> list[models.Condition]:
    """One condition per value type: strings and integers each as one match, booleans and floats one each."""
    strings: list[str] = []
    integers: list[int] = []
    others: list[models.Condition] = []
    for value in values:
        if isinstance(value, bool):  # before int: True is an int in Python, not in Qdrant
            others.append(models.FieldCondition(key=field, match=models.MatchValue(value=value)))
        elif isinstance(value, int):
            integers.append(value)
        elif isinstance(value, str):
            strings.append(value)
        elif isinstance(value, float) and math.isfinite(value):
            # Qdrant matches floats by range only; an equal range also finds an integer stored as 2 for 2.0
            others.append(models.FieldCondition(key=field, range=models.Range(gte=value, lte=value)))
        else:
            raise InputError(
                f"metadata filter {key!r}: match a str, int, bool, finite float or a list of them, got {value!r}"
            )
    conditions: list[models.Condition] = [
        models.FieldCondition(
            key=field, match=models.MatchValue(value=group[0]) if len(group) == 1 else models.MatchAny(any=group)
        )
        for group in (strings, integers)
        if group
    ]
    conditions.extend(others)
    # an empty list matches nothing, as MatchAny([]) always has
    return conditions or [models.FieldCondition(key=field, match=models.MatchAny(any=[]))]


def _has_field(field: str) -> models.Filter:
    """Points where `field` holds a value: not missing, null or [] (nothing a filter value could match;
    embedkit writes a null `source` when a run names none)."""
    return models.Filter(must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key=field))])
