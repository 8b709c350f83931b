"""What embedkit stores, and how it recognises it again: point ids, the payload, content hashes,
which documents a collection holds complete, and which embedders may write to or read a collection.

One stored chunk is one point:

    id       point_id(doc id, chunk index): uuid5 in a fixed namespace, so a re-run overwrites in place
    vector   the chunk's embedding
    payload  chunk_payload(): `page_content` and `metadata` (the user's own, exactly) as langchain-qdrant
             reads them, then embedkit's fields (CHUNK_FIELDS) and, once every chunk of the doc is written,
             CONTENT_HASH

The completeness rule (both drivers, embedkit.ingestion.pipeline and .ray): hash each document, ask the
collection which (doc id, content hash) it holds complete, chunk and embed only the others. A document is
complete when exactly `chunk_count` of its points carry its content hash (see Complete); the writer sets
the hash last, so a run killed mid-document leaves it incomplete, never wrongly complete.

Which embedder may write to a collection is decided by probes: the collection records the vectors of a few
fixed texts when it is created, and an embedder may write to it iff it reproduces them (same dimension,
normalisation and task settings, cosine >= PROBE_AGREEMENT). So the same weights run locally, on ONNX
Runtime, through `embedkit serve` or a TEI server share a collection, and other weights under the same
model id are refused.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from embedkit.chunking import Chunk
from embedkit.embedder import Embedder
from embedkit.errors import StoreError
from embedkit.ingestion.sources import Document
from embedkit.sinks.base import HybridSink, Sink, SparseConfig
from embedkit.sparse.base import SparseEncoder

__all__ = [
    "CHUNK_COUNT",
    "CHUNK_FIELDS",
    "CHUNK_INDEX",
    "CONTENT_HASH",
    "DOC_ID",
    "END",
    "HEADINGS",
    "ID_SCHEME",
    "METADATA",
    "MULTIVECTOR_COMPARED",
    "NAMESPACE",
    "PAGE_CONTENT",
    "PROBE_AGREEMENT",
    "PROBE_TEXTS",
    "SOURCE",
    "START",
    "Complete",
    "check_reader",
    "chunk_fields",
    "chunk_payload",
    "content_hash",
    "doc_key",
    "fingerprint",
    "multivector_fingerprint",
    "open_collection",
    "open_multivector",
    "open_sparse",
    "point_id",
    "probe_vectors",
    "record_multivector",
]

# -- the payload's field names: the writer, the sink's filters, the CLI and the retriever read these ---------

PAGE_CONTENT = "page_content"  # the chunk's text (langchain-qdrant's content_payload_key)
METADATA = "metadata"  # the document's metadata, exactly as given (langchain-qdrant's metadata_payload_key)
DOC_ID = "doc_id"
SOURCE = "source"  # the source the doc was read from; delete_missing acts on one source's docs only
CHUNK_INDEX = "chunk_index"
CHUNK_COUNT = "chunk_count"
START = "start"  # the chunk's character span in the stored file: [start, end)
END = "end"
HEADINGS = "headings"  # the chunk's section path
CONTENT_HASH = "content_hash"  # set on a doc's points only once all of them are written
CHUNK_FIELDS = (DOC_ID, SOURCE, CHUNK_INDEX, CHUNK_COUNT, START, END, HEADINGS)  # embedkit's own, per chunk

NAMESPACE = uuid.UUID("4f8a1b7e-3c2d-5e6f-9a0b-1c2d3e4f5a6b")  # fixed: point ids never change
ID_SCHEME = 2  # doc ids carry their source (see sources.py); collections written before did not


def point_id(doc_id: str, chunk_index: int) -> str:
    """The deterministic Qdrant point id of one chunk."""
    return str(uuid.uuid5(NAMESPACE, f"{doc_id}#{chunk_index}"))


def chunk_payload(doc: Document, chunk: Chunk, chunk_count: int) -> dict[str, Any]:
    """THE payload of one stored chunk (every driver writes through this), without CONTENT_HASH, which the
    writer sets once the whole doc is stored. `start` and `end` index the source as stored (a byte-order
    mark counted); `page_content` never holds one."""
    return {
        PAGE_CONTENT: chunk.text,
        METADATA: doc.metadata,
        DOC_ID: doc.id,
        SOURCE: doc.source,
        CHUNK_INDEX: chunk.index,
        CHUNK_COUNT: chunk_count,
        START: chunk.start + doc.offset,
        END: chunk.end + doc.offset,
        HEADINGS: list(chunk.headings),
    }


def chunk_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    """embedkit's own fields of a stored payload (CHUNK_FIELDS, None where absent, as for a point another tool
    wrote), for readers that show them beside the user's metadata without mixing the two."""
    fields = {name: payload.get(name) for name in CHUNK_FIELDS}
    fields[HEADINGS] = payload.get(HEADINGS, [])
    return fields


# -- identity: which vectors, which document version ------------------------------------------------------


def fingerprint(embedder: Embedder, *, task: str | None, dimensions: int | None, normalize: bool) -> dict[str, Any]:
    """What identifies the vectors an embedder gives with these settings."""
    return {
        "model_id": embedder.model_id,
        # not every embedder knows its weights (a remote one does not): then the probes decide
        "weights_digest": getattr(embedder, "weights_digest", None),
        "dimension": dimensions or embedder.dimension,
        "task": task,
        "dimensions": dimensions,
        "normalize": normalize,
        "quantize": getattr(embedder, "quantize", None),  # int8 vectors are not fp32 vectors
        "id_scheme": ID_SCHEME,
    }


def content_hash(doc: Document, settings: dict[str, Any], print_: dict[str, Any]) -> str:
    """sha256 (hex) of what decides a document's stored points: its text and metadata, the chunker's
    `settings`, the embedder fingerprint `print_` and the strategy its format implies."""
    # the strategy a file's format implies changes the chunks as much as the chunker's settings do
    blob = json.dumps([doc.text, doc.metadata, settings, print_, doc.strategy], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


_KEY = np.dtype("S16")


def doc_key(doc_id: str, content_hash: str) -> bytes:
    """16 bytes standing for one version of one document: (doc id, content hash)."""
    return hashlib.blake2b(f"{doc_id}\0{content_hash}".encode(), digest_size=16).digest()


class Complete:
    """The document versions a collection holds complete, as a sorted array of doc_key digests.

    Built from a sink's `hashed_points()`: (doc id, content hash, chunk count) of each point carrying a hash.
    A (doc id, content hash) is complete when exactly `chunk_count` points carry it. 16 bytes per point while
    folding, 16 per complete doc after: 100M docs fit in 1.6 GB, and the object pickles as one array (Ray
    shares it with every worker).
    """

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys  # sorted, unique, dtype S16

    @classmethod
    def fold(cls, hashed_points: Iterable[tuple[str, str, int]]) -> Complete:
        keys: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        page_keys: list[bytes] = []
        page_counts: list[int] = []
        for doc_id, hash_, chunk_count in hashed_points:
            page_keys.append(doc_key(doc_id, hash_))
            page_counts.append(chunk_count)
            if len(page_keys) >= 65536:  # bytes objects cost ~50 bytes each; arrays 16
                keys.append(np.array(page_keys, dtype=_KEY))
                counts.append(np.array(page_counts, dtype=np.int64))
                page_keys, page_counts = [], []
        keys.append(np.array(page_keys, dtype=_KEY))
        counts.append(np.array(page_counts, dtype=np.int64))
        all_keys, all_counts = np.concatenate(keys), np.concatenate(counts)
        unique, first, seen = np.unique(all_keys, return_index=True, return_counts=True)
        return cls(unique[seen == all_counts[first]])

    def __contains__(self, version: tuple[str, str]) -> bool:
        """Whether (doc id, content hash) is stored complete."""
        key = np.array(doc_key(*version), dtype=_KEY)
        at = int(np.searchsorted(self.keys, key))
        return at < len(self.keys) and self.keys[at] == key

    def __len__(self) -> int:
        return len(self.keys)


# -- which embedder may write to (or read) a collection --------------------------------------------------

# fixed texts whose vectors identify an embedder's vector space (prose, code, non-Latin scripts)
PROBE_TEXTS = (
    "The committee approved the budget after a long debate about the new library.",
    "def mean(values):\n    return sum(values) / len(values)",
    "Le chat dort sur le canapé. 猫はソファで寝ている。 Кошка спит на диване.",
)
PROBE_AGREEMENT = 0.9999  # the same weights agree to ~1e-6 across backends; other weights far below
# settings that must be equal besides the probes: they change the vectors without changing the model
_SETTINGS = ("dimension", "task", "dimensions", "normalize")
# fields that decided compatibility before collections had probes (model_id is only a label)
_COMPARED = ("weights_digest", "dimension", "task", "dimensions", "normalize", "quantize")


def probe_vectors(embedder: Embedder, *, task: str | None, dimensions: int | None, normalize: bool) -> np.ndarray:
    """The embedder's vectors of PROBE_TEXTS with these settings: float32 (len(PROBE_TEXTS), dim)."""
    return embedder.embed(list(PROBE_TEXTS), task=task, dimensions=dimensions, normalize=normalize)


def open_collection(
    sink: Sink,
    print_: dict[str, Any],
    probes: Callable[[], np.ndarray],
    *,
    reembed: bool,
    multivector: int | None = None,
) -> dict[str, Any]:
    """Create the collection (recording `print_` and the vectors `probes()` gives) or check that this
    embedder may write to it.

    Returns the fingerprint that goes into content hashes: the recorded one when the collection accepts
    this embedder, so documents stored through another backend of the same weights count as unchanged.
    Raises StoreError, before anything is written, when the collection's vectors are not comparable
    with this embedder's (unless `reembed`, which re-records this embedder and so re-embeds every doc).
    `probes` is called only when needed: not when the recorded fingerprint names these very weights.
    `multivector` (the width of ColBERT rows) creates the collection with a MaxSim multivector, or checks that
    the existing one has it (see `open_multivector`); only a QdrantSink takes it.
    """
    extra: dict[str, Any] = {} if multivector is None else {"multivector": multivector}
    recorded = sink.recorded_fingerprint()
    label = f"collection {sink.collection!r}"
    if recorded is not None and recorded.get("id_scheme") != ID_SCHEME:  # re-embedding would not help either
        raise StoreError(
            f"{label} was written by an earlier embedkit whose doc ids did not carry their source; "
            "ingest into a new collection (or remove this one first): re-using it would store every document twice"
        )
    if recorded is None or reembed:  # a new collection, or one another tool made, or re-recorded on purpose
        vectors = np.asarray(probes(), dtype=np.float32)
        record = {"texts": list(PROBE_TEXTS), "vectors": vectors.round(7).tolist()}
        sink.prepare(print_["dimension"], print_, probes=record, rewrite=True, **extra)
        return print_
    sink.prepare(print_["dimension"], print_, probes=None, rewrite=False, **extra)  # dimension and distance checks
    if _same_weights(recorded, print_):
        return recorded  # these very weights, run the same way, wrote it: nothing to probe
    stored = sink.recorded_probes()
    if stored is None:  # written before collections had probes: the fingerprint fields decide
        differing = [key for key in _COMPARED if recorded.get(key) != print_.get(key)]
        if differing:
            raise _refused(label, recorded, print_, differing)
        return recorded
    differing = [key for key in _SETTINGS if recorded.get(key) != print_.get(key)]
    if differing:
        raise _refused(label, recorded, print_, differing)
    agreement = _agreement(stored, probes())
    if agreement < PROBE_AGREEMENT:
        differing = [k for k in ("weights_digest", "quantize") if recorded.get(k) != print_.get(k)]
        known = (
            f" (recorded {_fields(recorded, differing)}; this one {_fields(print_, differing)})" if differing else ""
        )
        raise StoreError(
            f"{label} was written by embedder {recorded.get('model_id')!r} and this embedder "
            f"({print_.get('model_id')!r}) does not reproduce its vectors (probe cosine {agreement:.6f} < "
            f"{PROBE_AGREEMENT}): other weights, or another quantisation{known}. Re-embed everything with "
            "reembed=True (--reembed) or use another collection."
        )
    return recorded


def open_sparse(sink: Sink, encoder: SparseEncoder, *, reembed: bool) -> int:
    """Make the collection ready for `encoder`'s sparse vectors: add its sparse vector if it has none, and
    compute the sparse vectors its points lack (from their page_content: the dense vectors are kept).
    Returns how many points were filled in.

    Raises StoreError, before anything is changed, when the sink cannot hold sparse vectors, or when the
    stored sparse vectors were made by another encoder (other BM25 parameters, another SPLADE model),
    unless `reembed`: then every point's sparse vector is recomputed. Safe to stop at any moment: the
    next run fills in what is missing (a re-encoding first removes every old sparse vector, so none is
    left behind).
    """
    if not isinstance(sink, HybridSink):
        raise StoreError(f"{sink!r} cannot store sparse vectors (it is not a QdrantSink); drop the sparse encoder")
    wanted = encoder.fingerprint()
    recorded = sink.sparse_encoder()
    added = sink.add_sparse_vector(SparseConfig(encoder.modifier))
    if not added and recorded is not None and recorded != wanted:
        if not reembed:
            raise StoreError(
                f"collection {sink.collection!r} holds sparse vectors of {recorded} and this run's sparse encoder is "
                f"{wanted}: mixed, they would rank nonsense. Recompute them all with reembed=True (--reembed; the "
                "dense vectors are kept) or use another collection."
            )
        sink.clear_sparse()
    if recorded != wanted:
        sink.record_sparse_encoder(wanted)
    return sink.fill_sparse(encoder.embed_documents)


# what decides a multivector head's rows (its name is a label: the same folder elsewhere gives the same rows)
MULTIVECTOR_COMPARED = ("kind", "weights_digest", "head_digest", "size", "max_length", "task")


def multivector_fingerprint(embedder: Embedder, *, task: str | None) -> dict[str, Any] | None:
    """What decides the multivectors `embedder` gives (bge-m3's ColBERT head over its encoder): the weights, the
    head files' digest, the row width, the token limit and the task. None when it has no ColBERT head."""
    heads = getattr(embedder, "heads", None)
    if heads is None or getattr(heads, "colbert", None) is None:
        return None
    return {
        "kind": "bge-m3-colbert",
        "name": embedder.model_id,
        "weights_digest": getattr(embedder, "weights_digest", None),
        "head_digest": heads.digest,
        "size": heads.multivector_size,
        "max_length": embedder.max_input_tokens,
        "task": task,
    }


def open_multivector(sink: Sink, wanted: dict[str, Any] | None, *, reembed: bool) -> None:
    """Check, before anything is written, that this run's multivectors (`wanted`: `multivector_fingerprint`, None
    for a run that writes none) may go into the collection. The caller then creates or checks the collection
    (`open_collection(..., multivector=wanted["size"])`) and records `wanted` (`record_multivector`).

    StoreError when:
    - the run writes none but the collection records a multivector head: the docs this run rewrites would lose
      theirs (a late-interaction search drops a point without one);
    - the sink cannot hold multivectors (not a QdrantSink), or the existing collection has no multivector.
      Qdrant could add the named multivector in place (qdrant-edge-py 0.9's UpdateOperation.create_dense_vector,
      a server's create_vector_name from 1.18, qdrant-client's local mode), but filling it means a forward pass
      over every stored chunk's embedded text (its heading path and text; only the text is stored): the work of
      a fresh ingest, so the fix named is a new collection;
    - its multivectors were made by another head (other weights, another colbert_linear), unless `reembed`:
      the head is part of every content hash, so every doc of the run is embedded again.
    """
    label = f"collection {sink.collection!r}"
    recorded_of = getattr(sink, "multivector_encoder", None)
    recorded = recorded_of() if recorded_of is not None else None
    if wanted is None:
        if recorded is not None:
            raise StoreError(
                f"{label} stores ColBERT multivectors of {recorded.get('name')!r}: ingest with multivector=True "
                "(--colbert) and that model, so that the documents this run rewrites keep theirs"
            )
        return
    if recorded_of is None:
        raise StoreError(f"{sink!r} cannot store multivectors (it is not a QdrantSink); drop multivector=True")
    if sink.exists() and not sink.has_multivector():  # type: ignore[attr-defined]
        raise StoreError(
            f"{label} was created without a multivector {sink.multivector_name!r} "  # type: ignore[attr-defined]
            "and embedkit does not add one: filling it would run the model over every stored chunk again (the text "
            "it embedded, heading path and chunk, is not stored), which is what a fresh ingest does. Ingest with "
            "--colbert into a new collection, or "
            f"drop this one first (embedkit collections drop {sink.collection})"
        )
    if recorded is None or reembed:
        return
    differing = [key for key in MULTIVECTOR_COMPARED if recorded.get(key) != wanted.get(key)]
    if differing:
        raise StoreError(
            f"{label} holds multivectors of {recorded.get('name')!r} and this run's ColBERT head is "
            f"{wanted.get('name')!r}, which differs in {', '.join(differing)}: mixed, MaxSim would rank nonsense. "
            "Re-embed everything with reembed=True (--reembed) or use another collection."
        )


def record_multivector(sink: Sink, wanted: dict[str, Any]) -> None:
    """Record the head this run's multivectors come from (after `open_collection` made or checked the collection)."""
    recorded = sink.multivector_encoder()  # type: ignore[attr-defined]
    if recorded is None or any(recorded.get(key) != wanted.get(key) for key in MULTIVECTOR_COMPARED):
        sink.record_multivector_encoder(wanted)  # type: ignore[attr-defined]


def check_reader(sink: Sink, embedder: Embedder) -> None:
    """StoreError unless `embedder` reproduces the collection's probe vectors with the settings the
    collection was written with, so that its query vectors compare with the stored ones (a model id
    whose weights changed since, say). Collections without probes pass; nothing is embedded when the
    recorded fingerprint names these very weights."""
    recorded, stored = sink.recorded_fingerprint(), sink.recorded_probes()
    if recorded is None or stored is None:
        return
    task, dimensions, normalize = recorded.get("task"), recorded.get("dimensions"), recorded.get("normalize", True)
    if _same_weights(recorded, fingerprint(embedder, task=task, dimensions=dimensions, normalize=normalize)):
        return
    agreement = _agreement(stored, probe_vectors(embedder, task=task, dimensions=dimensions, normalize=normalize))
    if agreement < PROBE_AGREEMENT:
        raise StoreError(
            f"collection {sink.collection!r} was written by embedder {recorded.get('model_id')!r}, "
            f"and {embedder.model_id!r} does not reproduce its vectors (probe cosine {agreement:.6f}): its query "
            "vectors would not compare with the stored ones. Search with the model that wrote it."
        )


def _same_weights(recorded: dict[str, Any], print_: dict[str, Any]) -> bool:
    """Whether the fingerprints name the same known weights run the same way (then the vectors are the same)."""
    return print_.get("weights_digest") is not None and all(recorded.get(k) == print_.get(k) for k in _COMPARED)


def _agreement(stored: dict[str, Any], probes: np.ndarray) -> float:
    """The lowest cosine between the stored probe vectors and `probes`, the vectors of PROBE_TEXTS."""
    if stored.get("texts") != list(PROBE_TEXTS):
        return -1.0  # probes of other texts cannot be compared; treat as disagreement
    probes = np.asarray(probes, dtype=np.float32)
    reference = np.asarray(stored.get("vectors"), dtype=np.float32)
    if reference.shape != probes.shape:
        return -1.0
    dots = np.sum(reference * probes, axis=1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(probes, axis=1)
    return float(np.min(dots / np.maximum(norms, 1e-12)))


def _fields(print_: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{key}={print_.get(key)!r}" for key in keys)


def _refused(label: str, recorded: dict[str, Any], print_: dict[str, Any], differing: list[str]) -> StoreError:
    return StoreError(
        f"{label} was written by embedder {recorded.get('model_id')!r} ({_fields(recorded, differing)}); this "
        f"one is {print_.get('model_id')!r} ({_fields(print_, differing)}). Re-embed everything with "
        "reembed=True (--reembed) or use another collection."
    )
