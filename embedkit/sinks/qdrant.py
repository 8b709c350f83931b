"""Qdrant sink over qdrant-client: a server (`url=`), the embedded local store (`path=`) or memory.

A local path can be opened by only one client at a time, so one client is shared per path
within a process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import tenacity
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from embedkit.errors import InputError, StoreError
from embedkit.sinks.base import Point, SearchHit

__all__ = ["QdrantSink", "FINGERPRINT_KEY", "metadata_condition"]

FINGERPRINT_KEY = "embedkit"  # collection metadata key holding the embedder fingerprint
# fields that decide whether stored vectors are comparable with new ones (model_id is only a label)
_COMPARED = ("weights_digest", "dimension", "task", "dimensions", "normalize", "quantize")

_local_clients: dict[str, tuple[QdrantClient, threading.RLock]] = {}
_local_lock = threading.Lock()


def _local_client(path: str) -> tuple[QdrantClient, threading.RLock]:
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
        return _local_clients[key]


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


def _doc_filter(doc_id: str, *extra: models.Condition) -> models.Filter:
    return models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id)), *extra])


class QdrantSink:
    """One Qdrant collection written by embedkit: cosine distance, one vector per point (unnamed, or
    `vector_name`), payload `page_content` + `metadata` as langchain-qdrant reads them, plus doc_id,
    chunk_index, chunk_count, start, end, headings and content_hash.

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

    def close(self) -> None:
        """Close the client if this sink opened it (a shared local-path client is closed for all)."""
        if not self._owns_client:
            return
        if self._local_key is not None:
            with _local_lock:
                _local_clients.pop(self._local_key, None)
        self._raw_client.close()

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

    def prepare(self, dimension: int, fingerprint: dict[str, Any], *, reembed: bool = False) -> None:
        if not self.exists():
            params = models.VectorParams(size=dimension, distance=models.Distance.COSINE)
            self._call(
                self._client.create_collection,
                self.collection,
                vectors_config={self.vector_name: params} if self.vector_name else params,
                metadata={FINGERPRINT_KEY: fingerprint},
            )
            if not self._is_local:
                self._client.create_payload_index(self.collection, "doc_id", models.PayloadSchemaType.KEYWORD)
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
        recorded = self.recorded_fingerprint()
        if recorded is not None and not reembed:
            differing = [key for key in _COMPARED if recorded.get(key) != fingerprint.get(key)]
            if differing:
                raise StoreError(
                    f"collection {self.collection!r} was written by embedder {recorded.get('model_id')!r} "
                    f"({', '.join(f'{k}={recorded.get(k)!r}' for k in differing)}); this one is "
                    f"{fingerprint.get('model_id')!r} ({', '.join(f'{k}={fingerprint.get(k)!r}' for k in differing)}). "
                    "Re-embed everything with reembed=True (--reembed) or use another collection."
                )
        if recorded != fingerprint:
            self._client.update_collection(self.collection, metadata={FINGERPRINT_KEY: fingerprint})

    def complete_counts(self, hashes: Mapping[str, str]) -> dict[str, int]:
        counts = dict.fromkeys(hashes, 0)
        if not hashes:
            return counts
        docs = models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchAny(any=list(hashes)))])
        for payload in self._payloads(["doc_id", "content_hash"], docs):
            doc_id = payload.get("doc_id")
            if doc_id in hashes and payload.get("content_hash") == hashes[doc_id]:
                counts[doc_id] += 1
        return counts

    def hashed_points(self) -> Iterator[tuple[str, str, int]]:
        """(doc_id, content_hash, chunk_count) of every point that carries a content hash, page by page.

        A doc is complete when exactly chunk_count of its points carry the same hash; scale-out
        ingestion folds these into one compact snapshot instead of asking per document.
        """
        hashed = models.Filter(must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key="content_hash"))])
        for payload in self._payloads(["doc_id", "content_hash", "chunk_count"], hashed):
            yield str(payload["doc_id"]), str(payload["content_hash"]), int(payload["chunk_count"])

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

    def delete_docs_except(self, keep: set[str]) -> tuple[int, int]:
        """Delete every doc not in `keep`; returns (docs, points) removed."""
        missing: dict[str, int] = {}
        for payload in self._payloads(["doc_id"]):
            doc_id = payload.get("doc_id")
            if doc_id not in keep:
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
        surplus = _doc_filter(doc_id, models.FieldCondition(key="chunk_index", range=models.Range(gte=keep)))
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
            payload={"content_hash": content_hash},
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
        """The `k` nearest chunks, best first. `metadata_filter` keeps chunks whose metadata has each
        key equal to the value (a list value: any of them); `score_threshold` drops weaker hits."""
        if not self.exists():
            raise StoreError(f"collection {self.collection!r} does not exist at {self._where}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be an int >= 1, got {k!r}")
        response = self._client.query_points(
            self.collection,
            query=[float(x) for x in vector],
            limit=k,
            query_filter=metadata_condition(metadata_filter),
            using=self.vector_name,
            score_threshold=score_threshold,
            with_payload=True,
        )
        return [SearchHit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]


def _transient(error: BaseException) -> bool:
    if isinstance(error, (ResponseHandlingException, httpx.TransportError)):
        return True
    return isinstance(error, UnexpectedResponse) and error.status_code in (429, 502, 503, 504)


def metadata_condition(metadata_filter: Mapping[str, Any] | None) -> models.Filter | None:
    """A Qdrant filter over the `metadata` payload: every key must match (a list value matches any)."""
    if not metadata_filter:
        return None
    if not isinstance(metadata_filter, Mapping):
        raise InputError(f"metadata filter must be a mapping of key to value, got {type(metadata_filter).__name__}")
    conditions: list[models.Condition] = []
    for key, value in metadata_filter.items():
        if not isinstance(key, str) or not key:
            raise InputError(f"metadata filter keys must be non-empty strings, got {key!r}")
        if isinstance(value, (list, tuple, set)):
            match: models.Match = models.MatchAny(any=list(value))
        elif isinstance(value, (str, int, bool)):
            match = models.MatchValue(value=value)
        else:
            raise InputError(f"metadata filter {key!r}: match a str, int, bool or a list of them, got {value!r}")
        conditions.append(models.FieldCondition(key=f"metadata.{key}", match=match))
    return models.Filter(must=conditions)
