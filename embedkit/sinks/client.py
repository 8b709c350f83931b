"""The qdrant-client engine of QdrantSink: a Qdrant server (`url`, or a given `client`), memory
(`location=":memory:"`), or qdrant-client's local mode on a path (`engine="client-local"`).

A local path can be opened by only one client at a time, so one client is shared per path within a process.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path
from typing import Any

import httpx
import tenacity
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from embedkit.errors import InputError, StoreError
from embedkit.sinks.base import Point, SearchHit
from embedkit.sinks.qdrant import QdrantSink, Query, SparseConfig, StoredPoint, VectorConfig, unusable_reason
from embedkit.sparse.base import SparseVector

__all__ = ["ClientSink"]

_INDEX_SCHEMAS = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
}

_local_clients: dict[str, tuple[QdrantClient, threading.RLock]] = {}
_local_lock = threading.Lock()


def _local_client(path: str) -> tuple[QdrantClient, threading.RLock]:
    """The one client of the local-mode store at `path` in this process, opened on first use.

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


@atexit.register
def _close_local_clients() -> None:
    """Close the shared local-mode clients while the interpreter can still import.

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
    """Calls into a local-mode (or in-memory) store one at a time.

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


def _ours(vector: Any) -> Any:
    """A stored vector (list, or {name: list | models.SparseVector}) with embedkit's SparseVector inside."""
    if isinstance(vector, dict):
        return {name: _ours(value) for name, value in vector.items()}
    if isinstance(vector, models.SparseVector):
        return SparseVector(list(vector.indices), [float(v) for v in vector.values])
    return vector


def _theirs(vector: Any) -> Any:
    """The qdrant-client form of a vector as QdrantSink builds them."""
    if isinstance(vector, dict):
        return {name: _theirs(value) for name, value in vector.items()}
    if isinstance(vector, SparseVector):
        return models.SparseVector(indices=vector.indices, values=vector.values)
    return vector


def _vector_params(config: VectorConfig) -> models.VectorParams:
    """A dense vector's parameters; a MaxSim multivector gets no HNSW graph (m=0): it only reranks candidates
    the other vectors found (as Qdrant advises for ColBERT vectors)."""
    if not config.multivector:
        return models.VectorParams(size=config.size, distance=models.Distance(config.distance))
    return models.VectorParams(
        size=config.size,
        distance=models.Distance(config.distance),
        multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
        hnsw_config=models.HnswConfigDiff(m=0),
    )


def _modifier(config: SparseConfig) -> models.SparseVectorParams:
    return models.SparseVectorParams(modifier=models.Modifier.IDF if config.modifier == "idf" else None)


def _transient(error: BaseException) -> bool:
    if isinstance(error, (ResponseHandlingException, httpx.TransportError)):
        return True
    return isinstance(error, UnexpectedResponse) and error.status_code in (429, 502, 503, 504)


class ClientSink(QdrantSink):
    """QdrantSink over qdrant-client (see embedkit.sinks.qdrant.QdrantSink for the arguments).

    Calls to a server are retried with exponential backoff on transient failures (connection errors,
    timeouts, 429, 502-504), `retry_attempts` times at most. qdrant-client's local mode keeps the collection
    in RAM, scans every vector per search and has no payload indexes (it ignores `index_fields`).
    """

    engine = "qdrant-client"

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
        if client is not None:
            raw, lock = client, threading.RLock()
        elif path is not None:
            raw, lock = _local_client(str(path))
        elif location is not None:
            raw, lock = QdrantClient(location=location), threading.RLock()
        else:
            # embedkit's own first call tells whether the server answers; qdrant-client's version probe
            # would only warn from a background thread
            raw, lock = QdrantClient(url=url, api_key=api_key, check_compatibility=False), threading.RLock()
        self._raw_client = raw
        self._is_local = type(getattr(raw, "_client", None)).__name__ == "QdrantLocal"
        self.engine = "client-local" if self._is_local else "qdrant-client"
        self._client: Any = _Serialised(raw, lock) if self._is_local else raw
        self._owns_client = client is None
        self._local_key = str(Path(path).resolve()) if path is not None else None
        if self._is_local:
            self._check_new_name()

    def _check_new_name(self) -> None:
        """InputError now, naming the store, for a new collection name the local store would refuse.

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

    @property
    def client(self) -> QdrantClient:
        """The qdrant-client underneath (for langchain-qdrant and direct queries)."""
        return self._raw_client

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
            # OSError: the local store's own files (a full disk, a vanished directory)
            raise StoreError(
                f"{getattr(operation, '__name__', 'operation')} on {self.collection!r} failed: {exc}"
            ) from exc

    # -- the engine operations QdrantSink builds on --------------------------------------------------------

    def drop(self) -> None:
        self._call(self._client.delete_collection, self.collection)

    def collection_names(self) -> list[str]:
        return sorted(c.name for c in self._call(self._client.get_collections).collections)

    def exists(self) -> bool:
        return bool(self._call(self._client.collection_exists, self.collection))

    def _config(self) -> Any:
        return self._call(self._client.get_collection, self.collection).config

    def _metadata(self) -> dict[str, Any]:
        return dict(self._config().metadata or {})

    def _write_metadata(self, metadata: dict[str, Any]) -> None:
        self._call(self._client.update_collection, self.collection, metadata=metadata)

    def vectors(self) -> dict[str, VectorConfig]:
        params = self._config().params.vectors
        named = params if isinstance(params, dict) else {"": params} if params is not None else {}
        return {
            name: VectorConfig(p.size, p.distance.value, p.multivector_config is not None) for name, p in named.items()
        }

    def sparse_vectors(self) -> dict[str, SparseConfig]:
        params = self._config().params.sparse_vectors or {}
        return {name: SparseConfig("idf" if p.modifier == models.Modifier.IDF else None) for name, p in params.items()}

    def _create(
        self, vectors: dict[str, VectorConfig], sparse: dict[str, SparseConfig], metadata: dict[str, Any]
    ) -> None:
        params = {name: _vector_params(c) for name, c in vectors.items()}
        self._call(
            self._client.create_collection,
            self.collection,
            vectors_config=params[""] if set(params) == {""} else params,
            sparse_vectors_config={name: _modifier(c) for name, c in sparse.items()} or None,
            metadata=metadata,
        )

    def _add_sparse(self, name: str, config: SparseConfig) -> None:
        # a server needs Qdrant >= 1.18 for this (older ones answer 404: the StoreError says so)
        self._call(
            self._client.create_vector_name,
            self.collection,
            name,
            models.SparseVectorNameConfig(
                sparse=models.SparseVectorConfig(modifier=models.Modifier.IDF if config.modifier == "idf" else None)
            ),
        )

    def _clear_sparse(self) -> None:
        everything = models.FilterSelector(filter=models.Filter())
        self._call(self._client.delete_vectors, self.collection, vectors=[self.sparse_vector_name], points=everything)

    def _set_sparse(self, vectors: list[tuple[str, SparseVector]]) -> None:
        points = [models.PointVectors(id=pid, vector={self.sparse_vector_name: _theirs(v)}) for pid, v in vectors]
        self._call(self._client.update_vectors, self.collection, points=points, wait=True)

    def payload_indexes(self) -> dict[str, str]:
        if self._is_local:  # local mode keeps no indexes (and warns when asked for one)
            return {}
        schema = self._call(self._client.get_collection, self.collection).payload_schema or {}
        return {field: str(getattr(info.data_type, "value", info.data_type)) for field, info in schema.items()}

    def _create_index(self, field: str, kind: str) -> None:
        if not self._is_local:
            self._call(self._client.create_payload_index, self.collection, field, _INDEX_SCHEMAS[kind], wait=True)

    def _scroll(
        self, scroll_filter: models.Filter | None, fields: list[str] | bool, limit: int, offset: Any, vectors: bool
    ) -> tuple[list[StoredPoint], Any]:
        records, next_offset = self._call(
            self._client.scroll,
            self.collection,
            scroll_filter=scroll_filter,
            limit=limit,
            offset=offset,
            with_payload=fields,
            with_vectors=vectors,
        )
        return [StoredPoint(str(r.id), dict(r.payload or {}), _ours(r.vector)) for r in records], next_offset

    def _count(self, count_filter: models.Filter | None) -> int:
        return int(self._call(self._client.count, self.collection, count_filter=count_filter, exact=True).count)

    def _delete(self, selector: models.Filter) -> None:
        self._call(
            self._client.delete, self.collection, points_selector=models.FilterSelector(filter=selector), wait=True
        )

    def _set_payload(self, selector: models.Filter, payload: dict[str, Any]) -> None:
        self._call(self._client.set_payload, self.collection, payload=payload, points=selector, wait=True)

    def _upsert(self, points: list[Point] | list[StoredPoint]) -> None:
        structs = [
            models.PointStruct(
                id=p.id, vector=_theirs(p.vector if isinstance(p, StoredPoint) else self._vectors(p)), payload=p.payload
            )
            for p in points
        ]
        self._call(self._client.upsert, self.collection, points=structs, wait=True)

    def _query(self, query: Query) -> list[SearchHit]:
        dense_name = self.vector_name
        options: dict[str, Any] = {"query_filter": query.filter, "search_params": query.params}
        if query.multivector is not None:
            # the search as one prefetch of `fetch_k` candidates, reordered by MaxSim over the multivectors
            options = {
                "prefetch": [self._first_stage(query)],
                "query": query.multivector,
                "using": self.multivector_name,
                "query_filter": query.filter,
            }
            return self._points(query, options, threshold=False)
        if query.dense is not None and query.sparse is not None:
            branches = [
                models.Prefetch(
                    query=query.dense, using=dense_name, limit=query.fetch_k, filter=query.filter, params=query.params
                ),
                models.Prefetch(
                    query=_theirs(query.sparse), using=self.sparse_vector_name, limit=query.fetch_k, filter=query.filter
                ),
            ]
            fused: Any = (
                models.RrfQuery(rrf=models.Rrf(k=query.rrf_k, weights=list(query.weights) if query.weights else None))
                if query.fusion == "rrf"
                else models.FusionQuery(fusion=models.Fusion.DBSF)
            )
            options = {"prefetch": branches, "query": fused, "query_filter": query.filter}
        elif query.sparse is not None:
            options.update(query=_theirs(query.sparse), using=self.sparse_vector_name)
        else:
            options.update(query=query.dense, using=dense_name)
        return self._points(query, options, threshold=True)

    def _points(self, query: Query, options: dict[str, Any], *, threshold: bool) -> list[SearchHit]:
        response = self._call(
            self._client.query_points,
            self.collection,
            limit=query.k,
            score_threshold=query.score_threshold if threshold else None,
            with_payload=True,
            **options,
        )
        return [SearchHit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def _first_stage(self, query: Query) -> models.Prefetch:
        """The dense, sparse or fused search of `query` as a prefetch of its `fetch_k` best."""
        limit, where, threshold = query.fetch_k, query.filter, query.score_threshold
        if query.dense is not None and query.sparse is not None:
            branches = [
                models.Prefetch(
                    query=query.dense, using=self.vector_name, limit=limit, filter=where, params=query.params
                ),
                models.Prefetch(query=_theirs(query.sparse), using=self.sparse_vector_name, limit=limit, filter=where),
            ]
            fused: Any = (
                models.RrfQuery(rrf=models.Rrf(k=query.rrf_k, weights=list(query.weights) if query.weights else None))
                if query.fusion == "rrf"
                else models.FusionQuery(fusion=models.Fusion.DBSF)
            )
            return models.Prefetch(prefetch=branches, query=fused, limit=limit, score_threshold=threshold)
        if query.sparse is not None:
            return models.Prefetch(
                query=_theirs(query.sparse), using=self.sparse_vector_name, limit=limit, filter=where,
                score_threshold=threshold,
            )  # fmt: skip
        return models.Prefetch(
            query=query.dense, using=self.vector_name, limit=limit, filter=where, params=query.params,
            score_threshold=threshold,
        )  # fmt: skip
