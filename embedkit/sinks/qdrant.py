"""QdrantSink: one Qdrant collection written by embedkit, on one of two engines.

- Qdrant Edge (`embedkit.sinks.edge.EdgeSink`): Qdrant's own engine in-process, the embedded store of a
  `path`. One shard per collection, with a WAL, payload indexes and HNSW.
- qdrant-client (`embedkit.sinks.client.ClientSink`): a server (`url`, `client`), memory (`location=":memory:"`),
  or qdrant-client's local mode for a `path` with `engine="client-local"` (the Python stand-in that keeps the
  collection in RAM and scans every vector; kept for tools that open such folders with qdrant-client, and for
  folders an earlier embedkit wrote, which are detected and opened as they are).

`QdrantSink(...)` returns the engine's class, as `pathlib.Path(...)` returns a PosixPath. What a collection
holds (payload layout, crash protocol, filters, what a search returns) is written once here, over a few engine
operations each engine class implements; filters are qdrant-client models (embedkit.sinks.filters) that the
Edge engine translates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import numpy as np
from qdrant_client import models

from embedkit.errors import InputError, StoreError
from embedkit.ingestion.records import CHUNK_COUNT, CHUNK_INDEX, CONTENT_HASH, DOC_ID, METADATA, PAGE_CONTENT, SOURCE
from embedkit.sinks.base import Point, SearchHit, SparseConfig
from embedkit.sinks.filters import OWN_FIELDS, doc_filter, has_field, metadata_condition, payload_fields
from embedkit.sparse.base import SparseVector

__all__ = [
    "DEFAULT_MULTIVECTOR_NAME",
    "DEFAULT_SPARSE_NAME",
    "ENGINES",
    "FINGERPRINT_KEY",
    "FUSIONS",
    "INDEX_TYPES",
    "MODES",
    "MULTIVECTOR_KEY",
    "PROBES_KEY",
    "SPARSE_KEY",
    "VECTOR_NAME_PRESETS",
    "CollectionInfo",
    "QdrantSink",
    "Query",
    "SparseConfig",
    "StoredPoint",
    "VectorConfig",
    "unusable_reason",
]

log = logging.getLogger(__name__)

FINGERPRINT_KEY = "embedkit"  # collection metadata key holding the embedder fingerprint
PROBES_KEY = "embedkit_probes"  # ... and the probe texts' vectors that decide who may write (ingestion.records)
SPARSE_KEY = "embedkit_sparse"  # ... and the sparse encoder's fingerprint, in a collection with sparse vectors
MULTIVECTOR_KEY = "embedkit_multivector"  # ... and the multivector head's fingerprint (ingest(multivector=True))
DEFAULT_SPARSE_NAME = "sparse"
DEFAULT_MULTIVECTOR_NAME = (
    "colbert"  # the late-interaction multivector (bge-m3's ColBERT head), when a collection has one
)
# (dense, sparse) vector names other frameworks give a hybrid collection: write one they read as it is
VECTOR_NAME_PRESETS = {
    "embedkit": (None, DEFAULT_SPARSE_NAME),
    "langchain": (None, "langchain-sparse"),  # langchain-qdrant's QdrantVectorStore defaults
    "llamaindex": ("text-dense", "text-sparse-new"),  # llama-index-vector-stores-qdrant's hybrid defaults
}
MODES = ("dense", "sparse", "hybrid")
FUSIONS = ("rrf", "dbsf")
ENGINES = ("edge", "client-local")  # what `engine=` may name for a path
INDEX_TYPES = ("keyword", "integer", "float", "bool")  # payload index types `index_fields` may ask for
# embedkit's own fields the sink filters on: doc_id and source (keyword), chunk_index (delete_surplus' range)
OWN_INDEXES = {DOC_ID: "keyword", SOURCE: "keyword", CHUNK_INDEX: "integer"}


@dataclass(frozen=True)
class VectorConfig:
    size: int
    distance: str  # Qdrant's name: "Cosine", "Dot", "Euclid", "Manhattan"
    # a multivector (a [n, size] matrix per point) compared by Qdrant's MaxSim: sum over the query's vectors of
    # the best similarity among the point's. Not HNSW-indexed: it reranks candidates the other vectors found
    multivector: bool = False


@dataclass(frozen=True)
class Query:
    """One search as the engines run it: the dense and/or sparse query (both: prefetched `fetch_k` each and
    fused), `k` results, the filter for every branch, and search parameters."""

    k: int
    dense: list[float] | None
    sparse: SparseVector | None
    fetch_k: int
    fusion: str
    rrf_k: int
    weights: tuple[float, float] | None
    filter: models.Filter | None
    score_threshold: float | None
    params: models.SearchParams
    # the late-interaction stage: the query's vectors [m, D]; the search above keeps `fetch_k` candidates and
    # MaxSim against the stored multivectors (`multivector_name`) picks the `k` best of them
    multivector: list[list[float]] | None = None


def _floats(vector: Any) -> list[float]:
    return vector.tolist() if hasattr(vector, "tolist") else [float(x) for x in vector]


class StoredPoint(NamedTuple):
    id: str
    payload: dict[str, Any]
    vector: Any  # a list of floats, {name: list}, or None when not asked for


class CollectionInfo(TypedDict):
    """What `QdrantSink.info()` reports (embedkit collections inspect prints it)."""

    collection: str
    engine: str
    location: str
    points: int
    vectors: dict[str, dict[str, Any]]  # name ("" unnamed) -> {"size", "distance"}
    sparse_vectors: dict[str, dict[str, Any]]  # name -> {"modifier"}
    sparse_encoder: dict[str, Any] | None  # the sparse encoder's fingerprint
    multivector_encoder: dict[str, Any] | None  # the ColBERT head's fingerprint (ingest(multivector=True))
    payload_indexes: dict[str, str]  # field -> type
    indexed_vectors: int | None  # HNSW-indexed vectors, where the engine says
    fingerprint: dict[str, Any] | None


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


def _engine_class(path: Any, url: Any, location: Any, client: Any, *, engine: str | None) -> type[QdrantSink]:
    """Which engine serves these arguments (see the module docstring); errors for a mismatch."""
    given = [
        name for name, value in (("path", path), ("url", url), ("location", location), ("client", client)) if value
    ]
    if len(given) != 1:
        raise InputError(f"QdrantSink needs exactly one of path, url, location or client; got {given or 'none'}")
    if engine is not None and engine not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(ENGINES)} (for a path), got {engine!r}")
    from embedkit.sinks.client import ClientSink

    if path is None:
        if engine == "edge":
            raise InputError(f"engine='edge' is the embedded store of a path; {given[0]}= is served by qdrant-client")
        return ClientSink
    from embedkit.sinks.edge import EdgeSink, store_kind

    kind = store_kind(path)
    if engine == "client-local" and kind == "edge":
        raise StoreError(
            f"{Path(path).resolve()} holds Qdrant Edge collections, which qdrant-client's local mode cannot open; "
            "drop engine='client-local', or give another path"
        )
    if engine is None and kind == "client-local":
        _warn_client_local(Path(path).resolve())
        return ClientSink
    return ClientSink if engine == "client-local" else EdgeSink


_combined: dict[tuple[type, type], type] = {}


def _with_engine(subclass: type[QdrantSink], engine_class: type[QdrantSink]) -> type[QdrantSink]:
    """`subclass` (a user's QdrantSink subclass) over `engine_class`: its methods first, then the engine's."""
    key = (subclass, engine_class)
    if key not in _combined:
        _combined[key] = type(subclass.__name__, (subclass, engine_class), {"__module__": subclass.__module__})
    return _combined[key]


_warned: set[Path] = set()


def _warn_client_local(where: Path) -> None:
    if where not in _warned:
        _warned.add(where)
        log.warning(
            "%s is a qdrant-client local-mode store (what embedkit wrote before it ran Qdrant Edge): opened as it "
            "is, in qdrant-client's local mode; `embedkit collections convert --qdrant-path %s` copies it to Qdrant "
            "Edge (nothing is converted without that command)",
            where,
            where,
        )


class QdrantSink:
    """One Qdrant collection written by embedkit: cosine distance, one dense vector per point (unnamed, or
    `vector_name`), payload `page_content` + `metadata` as langchain-qdrant reads them, plus doc_id,
    chunk_index, chunk_count, start, end, headings and content_hash (embedkit.ingestion.records.chunk_payload).

    A collection may also hold a sparse vector per point (`sparse_vector_name`, BM25, SPLADE or bge-m3's lexical
    weights; see embedkit.sparse), searched alone or fused with the dense one (`search(mode=...)`);
    `VECTOR_NAME_PRESETS` names the vectors as langchain-qdrant or LlamaIndex do, so they read the collection
    as it is. And a multivector per point (`multivector_name`, bge-m3's ColBERT vectors; `prepare(...,
    multivector=D)`), compared by Qdrant's MaxSim to rerank what the dense/sparse/hybrid search found
    (`search(multivector=...)`).

    Exactly one of `path` (the embedded store: Qdrant Edge, or qdrant-client's local mode with
    `engine="client-local"`), `url` (+ `api_key`) of a server, `location` (":memory:") or a qdrant-client
    `client`. Payload indexes: doc_id and source (keyword), chunk_index (integer), and `index_fields`
    {metadata key: "keyword" | "integer" | "float" | "bool"} as `metadata.KEY` (qdrant-client's local mode has
    none and ignores them). Searches use HNSW with `hnsw_ef` (None: the engine's default), or scan every vector
    when `exact`. `indexing_threshold_kb` (Edge, at creation) is the vector storage size below which a segment
    is not HNSW-indexed.

    Raises InputError for bad arguments, StoreError when the store cannot be opened or an operation fails.
    """

    engine = "?"  # set by each engine class

    def __new__(cls, collection: str, **options: Any) -> QdrantSink:
        if cls._connect is not QdrantSink._connect:  # an engine class (or a subclass of one) was named
            return super().__new__(cls)
        where = [options.get(name) for name in ("path", "url", "location", "client")]
        engine_class = _engine_class(*where, engine=options.get("engine"))
        # a user's subclass of QdrantSink (overriding upsert, say) gets the engine beneath its own methods
        return super().__new__(engine_class if cls is QdrantSink else _with_engine(cls, engine_class))

    def __init__(
        self,
        collection: str,
        *,
        path: str | Path | None = None,
        url: str | None = None,
        api_key: str | None = None,
        location: str | None = None,
        client: Any = None,
        engine: str | None = None,
        batch_size: int = 256,
        vector_name: str | None = None,
        sparse_vector_name: str = DEFAULT_SPARSE_NAME,
        multivector_name: str = DEFAULT_MULTIVECTOR_NAME,
        retry_attempts: int = 5,
        index_fields: Mapping[str, str] | None = None,
        hnsw_ef: int | None = None,
        exact: bool = False,
        indexing_threshold_kb: int | None = None,
    ) -> None:
        if not collection or not isinstance(collection, str):
            raise InputError("collection must be a non-empty string")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if hnsw_ef is not None and (isinstance(hnsw_ef, bool) or not isinstance(hnsw_ef, int) or hnsw_ef < 1):
            raise InputError(f"hnsw_ef must be an int >= 1 or None, got {hnsw_ef!r}")
        self.index_fields = dict(index_fields or {})
        for key, kind in self.index_fields.items():
            payload_fields(key)  # the same key rules as filters
            if kind not in INDEX_TYPES:
                raise InputError(f"index field {key!r}: type {kind!r} is not one of {', '.join(INDEX_TYPES)}")
        self.collection = collection
        self.batch_size = batch_size
        self.vector_name = vector_name
        if not sparse_vector_name or not isinstance(sparse_vector_name, str) or sparse_vector_name == vector_name:
            raise InputError(
                f"sparse_vector_name must be a non-empty name other than the dense one's, got {sparse_vector_name!r}"
            )
        self.sparse_vector_name = sparse_vector_name
        taken = (vector_name, sparse_vector_name)
        if not multivector_name or not isinstance(multivector_name, str) or multivector_name in taken:
            raise InputError(
                "multivector_name must be a non-empty name other than the dense and sparse vectors' names, "
                f"got {multivector_name!r}"
            )
        self.multivector_name = multivector_name
        self.retry_attempts = retry_attempts
        self.hnsw_ef = hnsw_ef
        self.exact = exact
        self._closed = False
        self._lone_vector: bool | None = None  # the collection has one dense vector, unnamed (cached: _vectors)
        self._where = str(path or url or location or "client")
        self._connect(
            path=path,
            url=url,
            api_key=api_key,
            location=location,
            client=client,
            indexing_threshold_kb=indexing_threshold_kb,
        )

    def __enter__(self) -> QdrantSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(collection={self.collection!r}, at={self._where!r})"

    # -- what each engine implements -----------------------------------------------------------------------

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
        """Open the store these arguments name (exactly one of path, url, location, client is set)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the store if this sink opened it; calling it again does nothing. After close, every store
        operation of this sink raises StoreError."""
        raise NotImplementedError

    def exists(self) -> bool:
        """Whether the collection exists."""
        raise NotImplementedError

    def drop(self) -> None:
        """Delete the collection and every point in it (nothing asks first: `embedkit collections drop` does)."""
        raise NotImplementedError

    def collection_names(self) -> list[str]:
        """The names of every collection of the store this sink's collection lives in, sorted."""
        raise NotImplementedError

    def _metadata(self) -> dict[str, Any]:
        """The collection's metadata (FINGERPRINT_KEY, PROBES_KEY, ...); the collection exists."""
        raise NotImplementedError

    def _write_metadata(self, metadata: dict[str, Any]) -> None:
        raise NotImplementedError

    def vectors(self) -> dict[str, VectorConfig]:
        """The collection's dense vectors: name ("" for the unnamed one) -> size and distance."""
        raise NotImplementedError

    def sparse_vectors(self) -> dict[str, SparseConfig]:
        """The collection's sparse vectors: name -> modifier."""
        raise NotImplementedError

    def _create(
        self, vectors: dict[str, VectorConfig], sparse: dict[str, SparseConfig], metadata: dict[str, Any]
    ) -> None:
        raise NotImplementedError

    def _add_sparse(self, name: str, config: SparseConfig) -> None:
        """Add a sparse vector to the existing collection (its points have none until filled in)."""
        raise NotImplementedError

    def _set_sparse(self, vectors: list[tuple[str, SparseVector]]) -> None:
        """Set the sparse vector (`sparse_vector_name`) of existing points, keeping their other vectors."""
        raise NotImplementedError

    def _clear_sparse(self) -> None:
        raise NotImplementedError

    def payload_indexes(self) -> dict[str, str]:
        """The collection's payload indexes: field -> type name ("keyword", "integer", ...)."""
        raise NotImplementedError

    def _create_index(self, field: str, kind: str) -> None:
        raise NotImplementedError

    def _scroll(
        self, scroll_filter: models.Filter | None, fields: list[str] | bool, limit: int, offset: Any, vectors: bool
    ) -> tuple[list[StoredPoint], Any]:
        """One page of points matching `scroll_filter` in id order, and the offset of the next (None: no more)."""
        raise NotImplementedError

    def _count(self, count_filter: models.Filter | None) -> int:
        raise NotImplementedError

    def _delete(self, selector: models.Filter) -> None:
        raise NotImplementedError

    def _set_payload(self, selector: models.Filter, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    def _upsert(self, points: list[Point] | list[StoredPoint]) -> None:
        raise NotImplementedError

    def _query(self, query: Query) -> list[SearchHit]:
        raise NotImplementedError

    def optimize(self) -> bool:
        """Build the HNSW index now where the engine waits to be asked (Qdrant Edge); True if anything was done.
        A server optimises by itself and qdrant-client's local mode has no index: False."""
        return False

    def indexed_vectors(self) -> int | None:
        """How many vectors the HNSW index holds, where the engine says (None otherwise)."""
        return None

    # -- the collection ------------------------------------------------------------------------------------

    def _require(self) -> None:
        if not self.exists():
            raise StoreError(f"collection {self.collection!r} does not exist at {self._where}")

    def recorded_fingerprint(self) -> dict[str, Any] | None:
        """The embedder fingerprint the collection was written with, if it exists."""
        return self._metadata().get(FINGERPRINT_KEY) if self.exists() else None

    def recorded_probes(self) -> dict[str, Any] | None:
        """The probe texts and vectors the collection was created with (see embedkit.ingestion.records), if any."""
        return self._metadata().get(PROBES_KEY) if self.exists() else None

    def metadata(self) -> dict[str, Any]:
        """The collection's whole metadata (the fingerprint and probes under embedkit's keys); StoreError if the
        collection does not exist."""
        self._require()
        return self._metadata()

    def prepare(
        self,
        dimension: int,
        fingerprint: dict[str, Any],
        *,
        probes: dict[str, Any] | None = None,
        rewrite: bool = False,
        sparse: SparseConfig | None = None,
        multivector: int | None = None,
    ) -> None:
        """Create the collection for `dimension`-d cosine vectors recording `fingerprint` and `probes` (and a
        sparse vector `sparse_vector_name` when `sparse` is given, a MaxSim multivector `multivector_name` of
        `multivector`-d rows, dot product, when that is given), or check that the existing one holds such
        vectors (StoreError naming both when not); `rewrite` records `fingerprint` and `probes` over what an
        existing collection holds. Whether an embedder may write here is decided by the caller
        (embedkit.ingestion.records.open_collection); an existing collection gains its sparse vector through
        `add_sparse_vector`."""
        metadata = {FINGERPRINT_KEY: fingerprint, PROBES_KEY: probes}
        if multivector is not None and (
            isinstance(multivector, bool) or not isinstance(multivector, int) or multivector < 1
        ):
            raise InputError(
                f"multivector must be the width of a multivector's rows (an int >= 1), got {multivector!r}"
            )
        if not self.exists():
            named = {self.sparse_vector_name: sparse} if sparse is not None else {}
            vectors = {self.vector_name or "": VectorConfig(dimension, "Cosine")}
            if multivector is not None:
                # dot product: the rows are unit vectors already (FlagEmbedding's colbert_score is over dots)
                vectors[self.multivector_name] = VectorConfig(multivector, "Dot", multivector=True)
            self.create(vectors, metadata, sparse=named)
            return
        self._check_vectors(dimension)
        if multivector is not None:
            self._check_multivector(multivector)
        self.ensure_indexes()
        if rewrite:
            self._write_metadata({**self._metadata(), **metadata})

    def create(
        self,
        vectors: dict[str, VectorConfig],
        metadata: dict[str, Any],
        *,
        sparse: dict[str, SparseConfig] | None = None,
    ) -> None:
        """Create the collection with these dense (and sparse) vectors, metadata and the payload indexes
        (embedkit's own and `index_fields`): what `prepare` does for an embedder, and `push` for a copy."""
        self._lone_vector = None
        self._create(vectors, dict(sparse or {}), metadata)
        self.ensure_indexes()

    def add_sparse_vector(self, config: SparseConfig) -> bool:
        """Give the existing collection its sparse vector (`sparse_vector_name`) if it has none: True if added.
        Its points get their sparse vectors from `fill_sparse`. StoreError if it exists with another
        modifier (the stored weights would be read wrongly)."""
        self._require()
        present = self.sparse_vectors().get(self.sparse_vector_name)
        if present is not None:
            if present != config:
                raise StoreError(
                    f"collection {self.collection!r} has sparse vector {self.sparse_vector_name!r} with modifier "
                    f"{present.modifier!r}; this encoder needs {config.modifier!r}. Use another sparse_vector_name."
                )
            return False
        self._add_sparse(self.sparse_vector_name, config)
        return True

    def fill_sparse(self, encode: Callable[[list[str]], list[SparseVector]], *, page_size: int = 256) -> int:
        """Compute the sparse vector of every point that has none, from its `page_content` (empty for a point
        without one), `page_size` points at a time; returns how many were filled. Dense vectors are kept.
        Idempotent and resumable: a run stopped midway leaves the rest to the next."""
        self._require()
        missing = models.Filter(must_not=[models.HasVectorCondition(has_vector=self.sparse_vector_name)])
        filled, offset = 0, None
        while True:
            page, offset = self._scroll(missing, [PAGE_CONTENT], page_size, offset, False)
            if page:
                texts = [str(point.payload.get(PAGE_CONTENT) or "") for point in page]
                self._set_sparse(list(zip([point.id for point in page], encode(texts), strict=True)))
                filled += len(page)
            if offset is None:
                return filled

    def clear_sparse(self) -> None:
        """Remove every point's sparse vector (`sparse_vector_name`); the dense vectors stay."""
        self._require()
        self._clear_sparse()

    def sparse_encoder(self) -> dict[str, Any] | None:
        """The fingerprint of the sparse encoder the collection's sparse vectors were made with, if any."""
        return self._metadata().get(SPARSE_KEY) if self.exists() else None

    def record_sparse_encoder(self, fingerprint: dict[str, Any]) -> None:
        self._require()
        self._write_metadata({**self._metadata(), SPARSE_KEY: fingerprint})

    def multivector_encoder(self) -> dict[str, Any] | None:
        """The fingerprint of the head the collection's multivectors were made with (bge-m3's ColBERT), if any."""
        return self._metadata().get(MULTIVECTOR_KEY) if self.exists() else None

    def record_multivector_encoder(self, fingerprint: dict[str, Any]) -> None:
        self._require()
        self._write_metadata({**self._metadata(), MULTIVECTOR_KEY: fingerprint})

    def has_multivector(self) -> bool:
        """Whether the collection exists with a MaxSim multivector named `multivector_name`."""
        if not self.exists():
            return False
        params = self.vectors().get(self.multivector_name)
        return params is not None and params.multivector

    def update_metadata(self, metadata: dict[str, Any]) -> None:
        """Replace the collection's metadata (a server merges keys: a key is removed by setting it to None)."""
        self._require()
        self._write_metadata(metadata)

    def create_payload_index(self, field: str, kind: str) -> None:
        """Index payload `field` as `kind` ("keyword", "integer", "float" or "bool") unless it is indexed."""
        if kind not in INDEX_TYPES:
            raise InputError(f"payload index {field!r}: type {kind!r} is not one of {', '.join(INDEX_TYPES)}")
        if field not in self.payload_indexes():
            self._create_index(field, kind)

    def ensure_indexes(self) -> None:
        """Create the payload indexes the collection lacks: doc_id, source, chunk_index and `index_fields`."""
        wanted = {**OWN_INDEXES, **{f"{METADATA}.{key}": kind for key, kind in self.index_fields.items()}}
        have = self.payload_indexes()
        for field, kind in wanted.items():
            if field not in have:
                self._create_index(field, kind)

    def _check_vectors(self, dimension: int) -> None:
        vectors = self.vectors()
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
        if params.size != dimension or params.distance != "Cosine":
            raise StoreError(
                f"collection {self.collection!r} holds {params.size}-d vectors with {params.distance.lower()} "
                f"distance; this embedder gives {dimension}-d vectors for cosine distance. Use another collection."
            )

    def _check_multivector(self, size: int) -> None:
        params = self.vectors().get(self.multivector_name)
        if params is None or not params.multivector:
            raise StoreError(
                f"collection {self.collection!r} has no multivector {self.multivector_name!r} (it was created "
                "without one); write the multivectors to a new collection"
            )
        if params.size != size:
            raise StoreError(
                f"collection {self.collection!r} holds {params.size}-d multivector rows in {self.multivector_name!r}; "
                f"these are {size}-d. Use another collection."
            )

    def info(self) -> CollectionInfo:
        """Counts, vector configs, payload indexes and the fingerprint; StoreError if there is no collection."""
        self._require()
        return CollectionInfo(
            collection=self.collection,
            engine=self.engine,
            location=self._where,
            points=self.count(),
            vectors={
                name: {"size": c.size, "distance": c.distance, **({"multivector": "max_sim"} if c.multivector else {})}
                for name, c in self.vectors().items()
            },
            sparse_vectors={name: {"modifier": c.modifier} for name, c in self.sparse_vectors().items()},
            sparse_encoder=self.sparse_encoder(),
            multivector_encoder=self.multivector_encoder(),
            payload_indexes=self.payload_indexes(),
            indexed_vectors=self.indexed_vectors(),
            fingerprint=self.recorded_fingerprint(),
        )

    # -- points --------------------------------------------------------------------------------------------

    def count(self) -> int:
        """How many points the collection holds (0 when it does not exist)."""
        return self._count(None) if self.exists() else 0

    def upsert(self, points: Sequence[Point]) -> None:
        """Write `points` (their vectors under `vector_name` when set), `batch_size` per call."""
        for start in range(0, len(points), self.batch_size):
            self._upsert(list(points[start : start + self.batch_size]))

    def upsert_stored(self, points: Sequence[StoredPoint]) -> None:
        """Write points as another collection stored them (vectors already in its {name: vector} form): a copy."""
        for start in range(0, len(points), self.batch_size):
            self._upsert(list(points[start : start + self.batch_size]))

    def _vectors(self, point: Point) -> dict[str, Any] | list[float]:
        """The point's vectors as the collection names them (the engine turns a SparseVector into its own)."""
        dense = _floats(point.vector)
        if point.sparse is None and point.multivector is None:
            if self.vector_name:
                return {self.vector_name: dense}
            if self._lone_vector is None:
                self._lone_vector = set(self.vectors()) == {""}
            # beside a multivector, qdrant-client refuses an unnamed dense vector: name it "" there
            return dense if self._lone_vector else {"": dense}
        named: dict[str, Any] = {self.vector_name or "": dense}
        if point.sparse is not None:
            named[self.sparse_vector_name] = point.sparse
        if point.multivector is not None:
            named[self.multivector_name] = [_floats(row) for row in point.multivector]
        return named

    def page(self, offset: Any = None, limit: int = 256) -> tuple[list[StoredPoint], Any]:
        """One page of at most `limit` points with payloads and vectors, in id order from `offset` (None: the
        first), and the offset of the next page (None after the last): what `embedkit collections push` copies,
        resuming from a saved offset."""
        self._require()
        return self._scroll(None, True, limit, offset, True)

    def points(self, *, vectors: bool = True, page_size: int = 1024) -> Iterator[StoredPoint]:
        """Every point with its payload (and vector), in id order, read a page at a time."""
        self._require()
        offset = None
        while True:
            page, offset = self._scroll(None, True, page_size, offset, vectors)
            yield from page
            if offset is None:
                return

    def _payloads(self, fields: list[str], scroll_filter: models.Filter | None = None) -> Iterator[dict[str, Any]]:
        """The listed payload fields of every point (matching `scroll_filter`), page by page."""
        offset = None
        while True:
            page, offset = self._scroll(scroll_filter, fields, 1024, offset, False)
            for point in page:
                yield point.payload
            if offset is None:
                return

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

    def delete_surplus(self, doc_id: str, keep: int) -> int:
        """Delete `doc_id`'s points with chunk_index >= keep; returns how many there were."""
        surplus = doc_filter(doc_id, models.FieldCondition(key=CHUNK_INDEX, range=models.Range(gte=keep)))
        count = self._count(surplus)
        if count:
            self._delete(surplus)
        return count

    def mark_complete(self, doc_id: str, content_hash: str) -> None:
        """Set `content_hash` on every point of `doc_id`."""
        self._set_payload(doc_filter(doc_id), {CONTENT_HASH: content_hash})

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
            self._delete(doc_filter(doc_id))
        return len(missing), sum(missing.values())

    # -- search --------------------------------------------------------------------------------------------

    def search(
        self,
        vector: Sequence[float] | None,
        k: int,
        *,
        sparse_vector: SparseVector | None = None,
        mode: str | None = None,
        fetch_k: int | None = None,
        fusion: str = "rrf",
        rrf_k: int = 60,
        weights: tuple[float, float] | None = None,
        metadata_filter: Mapping[str, Any] | None = None,
        score_threshold: float | None = None,
        hnsw_ef: int | None = None,
        exact: bool | None = None,
        reranker: Any = None,
        query_text: str | None = None,
        multivector: Any = None,
    ) -> list[SearchHit]:
        """The `k` best chunks, best first, by the dense `vector`, the `sparse_vector`, or both fused, and
        optionally reordered by a `reranker` or by late interaction with the query's `multivector`.

        `mode`: "dense", "sparse" or "hybrid" (default: whichever the given vectors allow). Hybrid runs both
        searches in Qdrant's Query API, each keeping its `fetch_k` best (default max(4k, 20)), and fuses them:
        `fusion="rrf"` (reciprocal rank fusion as Qdrant computes it: the sum over branches of
        weight / (rrf_k + rank), ranks from 0; `weights` = (dense, sparse), default equal) or "dbsf"
        (distribution-based score fusion, no weights). `score_threshold` drops weaker hits (for hybrid: of the
        fused score). `hnsw_ef` and `exact` override the sink's for this search.

        `metadata_filter` keeps the chunks whose every key equals its value, in every branch (see
        embedkit.sinks.filters.metadata_condition: `doc_id` and `source` are embedkit's own fields, any other
        key is a metadata key). Raises StoreError when the collection does not exist, has no sparse vector for
        a sparse or hybrid search, or the store fails; InputError for a bad `k`, mode or filter, and naming
        the keys when nothing matched because no point has them (a typo, rather than "no results").

        Reranking: with a `reranker` (an embedkit Reranker, or anything with its `rerank(query, documents,
        top_k=)`, such as a TEIClient of a reranking server) the vector search keeps `fetch_k` candidates
        (default max(4k, 20)), the reranker scores each candidate's `page_content` against `query_text`, and
        the `k` best by the reranker come back in its order, `score` being the reranker's and
        `retrieval_score` the vector search's (`score_threshold` applies to the latter). Raises InputError
        without `query_text`, StoreError for a candidate with no text to rerank.

        Late interaction: with `multivector` (the query's ColBERT vectors, [m, D], e.g. bge-m3's
        `LocalEmbedder.embed_multivector`) the search above keeps `fetch_k` candidates (default max(4k, 20);
        `score_threshold` applies to them) and Qdrant reorders them by MaxSim against each point's stored
        multivector (`multivector_name`), in one query. `score` is Qdrant's MaxSim, sum_i max_j q_i . d_j;
        FlagEmbedding's ColBERT score is that divided by m (the same order: m is the query's). A candidate
        without a stored multivector is dropped. StoreError when the collection has no such multivector or its
        rows are of another width; InputError for a malformed matrix, or with a `reranker` too.
        """
        self._require()
        rows = None
        if multivector is not None:
            if reranker is not None:
                raise InputError("a search reranks by multivector= (late interaction in Qdrant) or reranker=, not both")
            rows = self._query_multivector(multivector)
        if reranker is not None:
            return self._reranked(vector, k, reranker, query_text, fetch_k, mode, sparse_vector, fusion, rrf_k,
                                  weights, metadata_filter, score_threshold, hnsw_ef, exact)  # fmt: skip
        query = self._plan(vector, k, sparse_vector, mode, fetch_k, fusion, rrf_k, weights)
        condition = metadata_condition(metadata_filter)
        params = models.SearchParams(
            hnsw_ef=self.hnsw_ef if hnsw_ef is None else hnsw_ef, exact=self.exact if exact is None else exact
        )
        hits = self._query(
            Query(**query, filter=condition, score_threshold=score_threshold, params=params, multivector=rows)
        )
        if not hits and condition is not None and metadata_filter:
            self._check_keys_exist(list(metadata_filter))
        return hits

    def _query_multivector(self, multivector: Any) -> list[list[float]]:
        """The query's multivector as rows of floats, checked against the collection's."""
        try:
            matrix = np.asarray(multivector, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"multivector must be a [m, D] matrix of numbers: {exc}") from exc
        if matrix.ndim != 2 or matrix.shape[0] < 1 or matrix.shape[1] < 1:
            raise InputError(f"multivector must be a [m, D] matrix with at least one row, got shape {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise InputError("multivector holds NaN or Inf")
        self._check_multivector(matrix.shape[1])
        return matrix.tolist()

    def _reranked(
        self,
        vector: Sequence[float] | None,
        k: int,
        reranker: Any,
        query_text: str | None,
        fetch_k: int | None,
        *search: Any,
    ) -> list[SearchHit]:
        """The vector search's `fetch_k` candidates, reordered by `reranker`: see `search`."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be an int >= 1, got {k!r}")
        if not callable(getattr(reranker, "rerank", None)):
            raise InputError(
                f"reranker must have a rerank(query, documents, top_k=) method, got {type(reranker).__name__}"
            )
        if not isinstance(query_text, str) or not query_text.strip():
            raise InputError(f"a reranked search needs the query's text (query_text=), got {query_text!r}")
        if fetch_k is None:
            fetch_k = max(4 * k, 20)
        elif isinstance(fetch_k, bool) or not isinstance(fetch_k, int) or fetch_k < k:
            raise InputError(f"fetch_k must be an int >= k ({k}), got {fetch_k!r}")
        mode, sparse_vector, fusion, rrf_k, weights, metadata_filter, score_threshold, hnsw_ef, exact = search
        candidates = self.search(
            vector, fetch_k, sparse_vector=sparse_vector, mode=mode, fetch_k=fetch_k, fusion=fusion, rrf_k=rrf_k,
            weights=weights, metadata_filter=metadata_filter, score_threshold=score_threshold, hnsw_ef=hnsw_ef,
            exact=exact,
        )  # fmt: skip
        if not candidates:
            return []
        texts = []
        for hit in candidates:
            text = hit.payload.get(PAGE_CONTENT)
            if not isinstance(text, str):
                raise StoreError(
                    f"point {hit.id} of collection {self.collection!r} has no {PAGE_CONTENT!r} text to rerank "
                    "(not written by embedkit or langchain-qdrant?)"
                )
            texts.append(text)
        results = reranker.rerank(query_text, texts, top_k=k)
        return [
            SearchHit(candidates[r.index].id, float(r.score), candidates[r.index].payload, candidates[r.index].score)
            for r in results
        ]

    def _plan(
        self,
        vector: Sequence[float] | None,
        k: int,
        sparse_vector: SparseVector | None,
        mode: str | None,
        fetch_k: int | None,
        fusion: str,
        rrf_k: int,
        weights: tuple[float, float] | None,
    ) -> dict[str, Any]:
        """The vectors, limits and fusion of a search, checked against each other and the collection."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be an int >= 1, got {k!r}")
        if vector is None and sparse_vector is None:
            raise InputError("a search needs the dense query vector, a sparse_vector, or both (hybrid)")
        if mode is None:
            mode = (
                "hybrid"
                if vector is not None and sparse_vector is not None
                else "sparse"
                if vector is None
                else "dense"
            )
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode in ("dense", "hybrid") and vector is None:
            raise InputError(f"a {mode} search needs the dense query vector")
        if mode in ("sparse", "hybrid"):
            if sparse_vector is None:
                raise InputError(f"a {mode} search needs the sparse query vector (sparse_vector=)")
            if not isinstance(sparse_vector, SparseVector):
                raise InputError(
                    f"sparse_vector must be an embedkit.sparse.SparseVector, got {type(sparse_vector).__name__}"
                )
            if self.sparse_vector_name not in self.sparse_vectors():
                present = sorted(self.sparse_vectors()) or "none"
                raise StoreError(
                    f"collection {self.collection!r} has no sparse vector {self.sparse_vector_name!r} (sparse vectors: "
                    f"{present}), so it cannot be searched in {mode} mode; add them with `embedkit ingest ... --sparse "
                    "bm25` (the dense vectors are kept), or search in dense mode"
                )
        if fusion not in FUSIONS:
            raise InputError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if fetch_k is None:
            fetch_k = max(4 * k, 20)
        elif isinstance(fetch_k, bool) or not isinstance(fetch_k, int) or fetch_k < k:
            raise InputError(f"fetch_k must be an int >= k ({k}), got {fetch_k!r}")
        if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 1:
            raise InputError(f"rrf_k must be an int >= 1, got {rrf_k!r}")
        if weights is not None:
            if fusion != "rrf":
                raise InputError("weights go with fusion='rrf' (Qdrant's DBSF takes none)")
            if len(weights) != 2 or any(not isinstance(w, (int, float)) or w < 0 for w in weights):
                raise InputError(f"weights must be (dense, sparse), two numbers >= 0, got {weights!r}")
        dense = None if mode == "sparse" or vector is None else _floats(vector)
        sparse = sparse_vector if mode != "dense" else None
        return {"k": k, "dense": dense, "sparse": sparse, "fetch_k": fetch_k, "fusion": fusion, "rrf_k": rrf_k,
                "weights": None if weights is None else (float(weights[0]), float(weights[1]))}  # fmt: skip

    def _check_keys_exist(self, keys: list[str]) -> None:
        """InputError naming the filter keys that no point of the collection has; an empty collection has
        no keys to compare with, so it passes. One point is enough to tell, so each check asks for one."""
        if not self._any_point(None):
            return
        missing = [key for key in keys if not any(self._any_point(has_field(field)) for field in payload_fields(key))]
        if not missing:
            return
        described = ", ".join(
            f"field {key!r}"
            if key in OWN_FIELDS
            else f"metadata key {payload_fields(key)[0].removeprefix(METADATA + '.')!r}"
            for key in missing
        )
        seen, more = self._metadata_keys()
        listing = ", ".join([*seen, "..."] if more else seen) or "none"
        raise InputError(f"no point in collection {self.collection!r} has {described} (keys seen: {listing})")

    def _any_point(self, scroll_filter: models.Filter | None) -> bool:
        page, _ = self._scroll(scroll_filter, False, 1, None, False)
        return bool(page)

    def _metadata_keys(self, sample: int = 256) -> tuple[list[str], bool]:
        """The metadata keys of the first `sample` points, sorted, and whether more points were left unread."""
        page, offset = self._scroll(None, [METADATA], sample, None, False)
        keys: set[str] = set()
        for point in page:
            metadata = point.payload.get(METADATA)
            if isinstance(metadata, dict):
                keys.update(str(key) for key in metadata)
        return sorted(keys), offset is not None
