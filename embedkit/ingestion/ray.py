"""Scale-out ingestion on Ray Data: the single-process pipeline's stages as one streaming dataset.

    read     each source file through the same loaders as `embedkit ingest` (Ray tasks)
    prepare  check and hash each document; drop the ones the collection already holds complete,
             chunk the others (actors holding only the tokenizer)
    embed    an actor pool, one model per actor, on CPU or one GPU each
    write    in the driver, through the single-process run's writer (writer.py): the same point ids,
             payloads, write order (upsert, delete surplus, set the hash) and report

Unchanged documents are known before anything is chunked or embedded, by the completeness rule both
drivers share (records.Complete, pipeline.chunk_pending): the driver reads the collection's complete
documents once into a sorted array of 16-byte digests of (doc id, content hash), which every prepare
actor shares through Ray's object store. Writes stay in the driver because the embedded Qdrant store
can be opened by one process only; see docs/scale.md for what that costs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice, pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embedkit.chunking import Chunk, Chunker, Strategy, default_chunker
from embedkit.errors import EmbedkitError, InputError, MissingDependencyError
from embedkit.ingestion.pipeline import chunk_pending
from embedkit.ingestion.records import (
    MULTIVECTOR_COMPARED,
    Complete,
    content_hash,
    fingerprint,
    multivector_fingerprint,
    open_collection,
    open_multivector,
    open_sparse,
    probe_vectors,
    record_multivector,
)
from embedkit.ingestion.report import IngestReport, Run, progress_bar, show_progress
from embedkit.ingestion.sources import (
    DEFAULT_PATTERNS,
    Document,
    Unreadable,
    check_document,
    list_files,
    load_jsonl,
    qualify,
    read_document,
    source_of,
)
from embedkit.ingestion.writer import Extras, Pending, writing
from embedkit.sinks.base import Sink
from embedkit.sparse.base import SparseEncoder

__all__ = ["DEFAULT_BATCH_DOCS", "ingest_ray"]

log = logging.getLogger(__name__)

DEFAULT_BATCH_DOCS = 64  # documents per actor call; the embedder then batches their chunks by tokens
_NO_ID = "<no id>"


def ingest_ray(
    source: Any,
    sink: Sink,
    *,
    model: str | os.PathLike[str] | None = None,
    load_options: Mapping[str, Any] | None = None,
    chunk_tokens: int | None = None,
    overlap_tokens: int | None = None,
    strategy: Strategy = "auto",
    patterns: Iterable[str] = DEFAULT_PATTERNS,
    task: str | None = "document",
    dimensions: int | None = None,
    normalize: bool = True,
    reembed: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
    delete_missing: bool = False,
    force_delete: bool = False,
    source_name: str | None = None,
    include_hidden: bool = False,
    num_gpus: int = 0,
    num_actors: int | None = None,
    cpus_per_actor: int | None = None,
    prepare_actors: int | None = None,
    batch_docs: int = DEFAULT_BATCH_DOCS,
    ray_address: str | None = None,
    progress: bool | None = None,
    id_field: str = "id",
    text_field: str = "text",
    metadata_field: str | None = "metadata",
    sparse: SparseEncoder | None = None,
    multivector: bool = False,
) -> IngestReport:
    """Ingest `source` into `sink` on a Ray cluster; the same points and report as `embedkit.ingest`
    (embedkit.ingestion.pipeline).

    `source`: a ray.data.Dataset with `id_field`, `text_field` and optional `metadata_field` columns
    (metadata as a struct / map, or JSON text to keep it exactly: Arrow fills keys a row lacks with
    null), or paths Ray can read: directories and text files (`patterns`, ids and sources as
    load_directory gives them, .jsonl files inside read as records), .jsonl files (as load_jsonl) and
    .parquet files (columns as for a Dataset, ids qualified by the file's source). Each file is read
    by one task, so give large corpora as many files. `source_name` names the source of every path (ids
    stay the same when the corpus moves) or qualifies a Dataset's ids; `delete_missing` and
    `force_delete` act on this run's sources as in embedkit.ingest.

    `model` and `load_options` (embedkit.load's keywords: dtype, backend, quantize, ...) are loaded
    once per actor. `num_gpus`: embed on that many GPU actors, one GPU each; with 0, on `num_actors`
    CPU actors (default 1) of `cpus_per_actor` threads (default: the cluster's CPUs shared out).
    `prepare_actors` chunk and hash (default: one per embed actor). `ray_address` connects to a
    cluster (default: the one this process is connected to, else a local one started and stopped
    here). The other keywords are embedkit.ingest's and the Chunker's.

    `multivector=True` stores each chunk's ColBERT multivector as embedkit.ingest does: each actor runs one
    `embed_all` pass for the dense and ColBERT vectors, with the same collection checks and crash protocol. A
    sparse encoder runs in this process's writer over page_content, as without multivectors (bge-m3's
    lexical weights are not carried from the actors' pass here).
    """
    if not isinstance(multivector, bool):
        raise InputError(f"multivector must be True or False, got {multivector!r}")
    _check_options(on_error, num_gpus, num_actors, cpus_per_actor, prepare_actors, batch_docs)
    ray = _import_ray()
    source_override = source_name
    if isinstance(source, ray.data.Dataset):
        sources: list[str] = [source_override or ""]
    else:
        source = _source_paths(source)
        sources = [source_override or source_of(path) for path in source]
    started = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    owns_cluster = not ray.is_initialized()
    if owns_cluster:
        # quiet means quiet: the workers' logs and Ray's own warnings stay out of the user's terminal
        level = logging.WARNING if show else logging.ERROR
        ray.init(address=ray_address, include_dashboard=False, logging_level=level, log_to_driver=show)
    elif ray_address is not None:
        log.warning("already connected to a Ray cluster; ray_address=%r is not used", ray_address)
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    # documents reach the driver in source order, so "first occurrence wins" for a repeated id holds
    context.execution_options.preserve_order = True
    context.enable_progress_bars = show
    data_log = logging.getLogger("ray.data")
    saved_level = data_log.level
    if not show:  # no per-dataset execution plans, nor the notice that progress bars are off
        data_log.setLevel(logging.ERROR)
    try:
        gpus = num_gpus
        actors = gpus or num_actors or 1
        cpus = cpus_per_actor or (1 if gpus else max(1, int(ray.cluster_resources().get("CPU", 1)) // actors))
        listing = _Listing(patterns, source_override, include_hidden, id_field, text_field, metadata_field)
        docs = _read(ray, source, listing)
        embedder = _Embedder(
            model, dict(load_options or {}), task, dimensions, normalize, threads=cpus, multivector=multivector
        )
        plan = _describe(ray, embedder, gpus, cpus, chunk_tokens, overlap_tokens, strategy)
        # a mismatch fails before any work; hashes use the fingerprint the collection accepts
        colbert = plan["multivector"]
        open_multivector(sink, colbert, reembed=reembed)
        size = None if colbert is None else colbert["size"]
        print_ = open_collection(sink, plan["fingerprint"], lambda: plan["probes"], reembed=reembed, multivector=size)
        if colbert is not None:  # as embedkit.ingest: the head is recorded and part of every content hash
            record_multivector(sink, colbert)
            print_ = {**print_, "multivector": {key: colbert[key] for key in MULTIVECTOR_COMPARED}}
        filled = open_sparse(sink, sparse, reembed=reembed) if sparse is not None else 0
        # the token budget (the tokenizer) and the snapshot of complete docs, put once for every prepare actor
        shared = [ray.put(plan["budget"]), ray.put(Complete.fold(sink.hashed_points()))]
        prepared = docs.map_batches(
            _Prepare,
            fn_constructor_kwargs={
                "shared": shared,
                "settings": plan["settings"],
                "fingerprint": print_,
                "task": task,
            },
            batch_size=batch_docs,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=prepare_actors or actors),
            num_cpus=0,  # light next to embedding (as is reading): every logical CPU stays with the embed actors
        )
        embedded = prepared.map_batches(
            _EmbedActor,
            fn_constructor_kwargs={"embedder": embedder},
            batch_size=batch_docs,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if gpus else 0,
            num_cpus=1 if gpus else cpus,
        )
        # sparse vectors are computed in this process's writer thread, beside the writes
        run = _write(embedded, sink, plan["dimension"], sparse, on_error, show, started, size)
        run.report.sparse_filled = filled
        return run.finish(
            sink, delete_missing=delete_missing, force_delete=force_delete, sources=sources, started=started
        )
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, EmbedkitError):  # an embedkit error inside an actor: raise it as itself
            if hasattr(error, "report"):
                cause.report = error.report  # type: ignore[attr-defined]
            raise cause from error
        raise
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        data_log.setLevel(saved_level)
        if owns_cluster:
            ray.shutdown()


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingDependencyError(
            f"scale-out ingestion needs Ray Data ({exc.name} is missing): pip install 'embedkit[ray]'"
        ) from exc
    return ray


def _check_options(
    on_error: str,
    num_gpus: Any,
    num_actors: Any,
    cpus_per_actor: Any,
    prepare_actors: Any,
    batch_docs: Any,
) -> None:
    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    for name, value, least, optional in (
        ("num_gpus", num_gpus, 0, False),
        ("num_actors", num_actors, 1, True),
        ("cpus_per_actor", cpus_per_actor, 1, True),
        ("prepare_actors", prepare_actors, 1, True),
        ("batch_docs", batch_docs, 1, False),
    ):
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"{name} must be an int >= {least}, got {value!r}")
    if num_gpus and num_actors is not None:
        raise InputError("give num_gpus (one GPU actor each) or num_actors (CPU actors), not both")


# -- the model, as each actor loads it -----------------------------------------------------------


class _Embedder:
    """What every actor needs to load the same embedder and call it the same way (picklable)."""

    def __init__(
        self,
        model: str | os.PathLike[str] | None,
        load_options: dict[str, Any],
        task: str | None,
        dimensions: int | None,
        normalize: bool,
        threads: int,
        multivector: bool = False,
    ) -> None:
        self.model = None if model is None else os.fspath(model)
        self.multivector = multivector
        self.load_options = load_options
        self.task = task
        self.dimensions = dimensions
        self.normalize = normalize
        self.threads = threads

    def load(self) -> Any:
        import torch

        from embedkit.local.loader import load

        # an actor shares its node with others: use the CPUs it was given, not every core
        torch.set_num_threads(self.threads)
        os.environ["EMBEDKIT_NUM_THREADS"] = str(self.threads)
        return load(self.model, **self.load_options)

    def embed(self, embedder: Any, texts: list[str]) -> np.ndarray:
        return embedder.embed(texts, task=self.task, dimensions=self.dimensions, normalize=self.normalize)

    def embed_all(self, embedder: Any, texts: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One pass: the dense vectors and the ColBERT rows of each text."""
        out = embedder.embed_all(texts, task=self.task, dimensions=self.dimensions, normalize=self.normalize)
        return out.dense, out.multivector


class _TokenBudget:
    """The tokenizer side of a loaded embedder, for chunking without the model (picklable)."""

    def __init__(self, tokenizer: Any, max_input_tokens: int, task: str | None, overhead: int) -> None:
        self.tokenizer = tokenizer
        self.max_input_tokens = max_input_tokens
        self._task = task
        self._overhead = overhead

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def input_overhead(self, task: str | None = None) -> int:
        if task != self._task:
            raise InputError(f"this token budget was measured for task {self._task!r}, not {task!r}")
        return self._overhead


def _describe_on_worker(
    embedder: _Embedder, chunk_tokens: int | None, overlap_tokens: int | None, strategy: Strategy
) -> dict[str, Any]:
    """Load the model once, as the actors will, and report what the driver needs before reading."""
    loaded = embedder.load()
    chunker = default_chunker(
        loaded, max_tokens=chunk_tokens, overlap_tokens=overlap_tokens, strategy=strategy, task=embedder.task
    )
    # bad task / dimensions fail here, not mid-run; the probes decide whether the collection accepts us
    probes = probe_vectors(loaded, task=embedder.task, dimensions=embedder.dimensions, normalize=embedder.normalize)
    colbert = multivector_fingerprint(loaded, task=embedder.task) if embedder.multivector else None
    if embedder.multivector and (colbert is None or not hasattr(loaded, "embed_all")):
        raise InputError(
            "multivector=True needs an embedder with a ColBERT head (colbert_linear.pt beside a local model's "
            f"weights, as bge-m3 ships it); {loaded.model_id!r} has none"
        )
    return {
        "multivector": colbert,
        "fingerprint": fingerprint(
            loaded, task=embedder.task, dimensions=embedder.dimensions, normalize=embedder.normalize
        ),
        "probes": probes,
        "dimension": int(probes.shape[1]),
        "settings": chunker.settings,
        "budget": _TokenBudget(
            loaded.tokenizer, loaded.max_input_tokens, embedder.task, loaded.input_overhead(embedder.task)
        ),
    }


def _describe(
    ray: Any,
    embedder: _Embedder,
    gpus: int,
    cpus: int,
    chunk_tokens: int | None,
    overlap_tokens: int | None,
    strategy: Strategy,
) -> dict[str, Any]:
    task = ray.remote(_describe_on_worker).options(num_gpus=1 if gpus else 0, num_cpus=1 if gpus else cpus)
    return ray.get(task.remote(embedder, chunk_tokens, overlap_tokens, strategy))


# -- read: sources to documents ------------------------------------------------------------------


class _Listing:
    """How paths and rows become documents: the same ids, sources and checks as sources.py (picklable)."""

    def __init__(
        self,
        patterns: Iterable[str],
        source_name: str | None,
        include_hidden: bool,
        id_field: str,
        text_field: str,
        metadata_field: str | None,
    ) -> None:
        self.patterns = tuple(patterns)
        self.source_name = source_name
        self.include_hidden = include_hidden
        self.columns = {"id_field": id_field, "text_field": text_field, "metadata_field": metadata_field}

    def files(self, path: Path) -> list[dict[str, str]]:
        """One row per file to read under `path`: kind (text, jsonl, parquet), source, doc id or id prefix."""
        source = self.source_name if self.source_name is not None else source_of(path)
        if path.is_file():
            kind = path.suffix.lower()[1:] if path.suffix.lower() in (".jsonl", ".parquet") else "text"
            doc_id = source if self.source_name is None else qualify(source, path.name)
            return [{"path": str(path), "kind": kind, "source": source, "doc_id": doc_id, "prefix": ""}]
        rows = []
        for file, relative in list_files(path, self.patterns, include_hidden=self.include_hidden):
            jsonl = file.suffix.lower() == ".jsonl"
            rows.append({
                "path": str(file),
                "kind": "jsonl" if jsonl else "text",
                "source": source,
                "doc_id": "" if jsonl else qualify(source, relative),
                "prefix": relative if jsonl else "",
            })  # fmt: skip
        return rows


def _source_paths(source: Any) -> list[Path]:
    """The paths of a source that is not a Dataset, each checked to exist."""
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    if not isinstance(source, Iterable) or isinstance(source, bytes):
        raise InputError(f"source must be a ray.data.Dataset or paths, got {type(source).__name__}")
    paths = [Path(path) for path in source]
    if not paths:
        raise InputError("source names no paths")
    for path in paths:
        if not path.exists():
            raise InputError(f"no such file or directory: {path}")
    return paths


def _read(ray: Any, source: Any, listing: _Listing) -> Any:
    """A dataset of documents: one row each, the columns of _DOC_COLUMNS ('' error when readable)."""
    if isinstance(source, ray.data.Dataset):
        return source.map_batches(
            _rows_to_docs,
            fn_kwargs={**listing.columns, "source": listing.source_name or "", "origin": "dataset"},
            batch_format="pyarrow",
            num_cpus=0,
        )
    paths: list[Path] = source
    files = [row for path in paths for row in listing.files(path)]
    if not files:
        log.warning("no files matching %s under %s", ", ".join(listing.patterns), ", ".join(map(str, paths)))
        return ray.data.from_items(
            [{"path": "", "kind": "none", "source": "", "doc_id": "", "prefix": ""}]
        ).map_batches(_files_to_docs, fn_kwargs=listing.columns, batch_size=1, batch_format="numpy", num_cpus=0)
    # one row per file; a task reads its file with the single-process loaders (same ids, same errors)
    rows = ray.data.from_items(files, override_num_blocks=min(len(files), 256))
    return rows.map_batches(_files_to_docs, fn_kwargs=listing.columns, batch_size=1, batch_format="numpy", num_cpus=0)


_DOC_COLUMNS = ("id", "text", "metadata", "error", "source", "origin", "strategy", "offset", "empty")


def _doc_rows(items: Iterable[Document | Unreadable]) -> dict[str, np.ndarray]:
    rows: dict[str, list[Any]] = {column: [] for column in _DOC_COLUMNS}
    for item in items:
        error, empty = "", False
        if isinstance(item, Unreadable):
            error, empty = item.reason, item.empty
        else:
            try:
                item = check_document(item, item.origin or f"doc {item.id!r}")  # metadata made JSON-safe here
            except InputError as exc:
                error = str(exc)
        document = item if isinstance(item, Document) and not error else None
        values = (
            item.id if item.id is not None else _NO_ID,
            document.text if document else "",
            json.dumps(document.metadata, ensure_ascii=False) if document else "{}",
            error,
            item.source,
            item.origin,
            (document.strategy or "") if document else "",
            document.offset if document else 0,
            empty,
        )
        for column, value in zip(_DOC_COLUMNS, values, strict=True):
            rows[column].append(value)
    return {column: np.array(values, dtype=object) for column, values in rows.items()}


def _files_to_docs(batch: dict[str, np.ndarray], **columns: str | None) -> Iterator[dict[str, np.ndarray]]:
    for path, kind, source, doc_id, prefix in zip(
        batch["path"], batch["kind"], batch["source"], batch["doc_id"], batch["prefix"], strict=True
    ):
        if kind == "none":
            yield _doc_rows([])
        elif kind == "jsonl":
            loaded = load_jsonl(path, source=str(source), prefix=str(prefix), **columns)  # type: ignore[arg-type]
            while window := list(islice(loaded, 1024)):
                yield _doc_rows(window)
        elif kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            for record_batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                table = pa.Table.from_batches([record_batch])
                yield _rows_to_docs(table, **columns, source=str(source), origin=str(path))  # type: ignore[arg-type]
        else:
            yield _doc_rows([read_document(Path(path), str(doc_id), source=str(source))])


def _rows_to_docs(
    table: Any, *, id_field: str, text_field: str, metadata_field: str | None, source: str, origin: str
) -> dict[str, np.ndarray]:
    names = set(table.column_names)
    for needed in (id_field, text_field):
        if needed not in names:
            raise InputError(f"the dataset has no {needed!r} column (columns: {', '.join(sorted(names))})")
    ids = table.column(id_field).to_pylist()
    texts = table.column(text_field).to_pylist()
    metadata = table.column(metadata_field).to_pylist() if metadata_field in names else [None] * len(ids)
    items: list[Document | Unreadable] = []
    for local_id, text, meta in zip(ids, texts, metadata, strict=True):
        if local_id is None:
            where = f"{origin}: a row"
            items.append(Unreadable(None, f"{where} has no {id_field!r}", source, where))
            continue
        where = f"{origin} (id {str(local_id)!r})"
        doc_id = qualify(source, str(local_id))
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except ValueError as exc:
                meta = exc
        if isinstance(meta, list):  # Arrow's map type: a list of (key, value) pairs
            meta = dict(meta)
        if meta is not None and not isinstance(meta, dict):
            items.append(Unreadable(doc_id, f"{where}: {metadata_field!r} must be an object", source, where))
            continue
        items.append(Document(doc_id, text, dict(meta or {}), source, where))
    return _doc_rows(items)


# -- prepare: chunk, hash, skip what is complete -------------------------------------------------


class _Prepare:
    """Hashes documents and chunks the pending ones; marks each bad, unchanged, or pending (to embed)."""

    def __init__(
        self, shared: list[Any], settings: dict[str, Any], fingerprint: dict[str, Any], task: str | None
    ) -> None:
        import ray

        budget, self._complete = ray.get(shared)  # the token budget and the snapshot of complete docs
        self._chunker = Chunker(
            budget,
            settings["max_tokens"],
            overlap_tokens=settings["overlap_tokens"],
            strategy=settings["strategy"],
            task=task,
            heading_context=settings["heading_context"],
        )
        if self._chunker.settings != settings:  # would give other chunks and hashes than the driver's plan
            raise RuntimeError(f"chunker settings {self._chunker.settings} differ from the plan's {settings}")
        self._fingerprint = fingerprint

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[Any]] = {"status": [], "content_hash": [], "chunks": [], "chunked": [], "error": []}
        rows = zip(batch["id"], batch["text"], batch["metadata"], batch["error"], batch["strategy"], strict=True)
        for doc_id, text, metadata, error, strategy in rows:
            status, hash_, chunked = "bad", "", False
            chunks: list[Chunk] = []
            if not error:
                doc = Document(str(doc_id), str(text), json.loads(metadata), strategy=strategy or None)
                hash_ = content_hash(doc, self._chunker.settings, self._fingerprint)
                try:
                    split = chunk_pending(self._chunker, doc, hash_, self._complete)
                    status, chunks, chunked = ("unchanged", [], False) if split is None else ("pending", split, True)
                except InputError as exc:  # reported by the driver as the single-process run does
                    status, error, chunked = "bad", str(exc), True
            out["status"].append(status)
            out["content_hash"].append(hash_)
            out["chunks"].append(json.dumps([dataclasses.asdict(c) for c in chunks], ensure_ascii=False))
            out["chunked"].append(chunked)
            out["error"].append(error)
        passed = {column: batch[column] for column in _DOC_COLUMNS if column not in ("text", "error")}
        return {**passed, **{column: np.array(values, dtype=object) for column, values in out.items()}}


def _chunk(fields: dict[str, Any]) -> Chunk:
    return Chunk(**{**fields, "headings": tuple(fields["headings"])})


# -- embed ---------------------------------------------------------------------------------------


class _EmbedActor:
    """One model per actor; embeds the pending documents' chunks, passes the rest through."""

    def __init__(self, embedder: _Embedder) -> None:
        self._spec = embedder
        self._embedder = embedder.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        statuses = zip(batch["status"], batch["chunks"], strict=True)
        chunk_lists = [json.loads(chunks) if status == "pending" else [] for status, chunks in statuses]
        texts = [_chunk(fields).embedding_text for chunks in chunk_lists for fields in chunks]
        rows: list[np.ndarray] = []
        if not texts:
            vectors = np.zeros((0, 0), np.float32)
        elif self._spec.multivector:
            vectors, rows = self._spec.embed_all(self._embedder, texts)
        else:
            vectors = self._spec.embed(self._embedder, texts)
        blobs, cursor = [], 0
        multivectors, counts = [], []
        for chunks in chunk_lists:
            blobs.append(np.ascontiguousarray(vectors[cursor : cursor + len(chunks)], dtype=np.float32).tobytes())
            if self._spec.multivector:  # each doc's chunks' rows, concatenated, and how many each chunk has
                mine = rows[cursor : cursor + len(chunks)]
                multivectors.append(b"".join(np.ascontiguousarray(m, dtype=np.float32).tobytes() for m in mine))
                counts.append(json.dumps([len(m) for m in mine]))
            cursor += len(chunks)
        extra = {}
        if self._spec.multivector:
            extra = {"multivectors": np.array(multivectors, dtype=object), "rows": np.array(counts, dtype=object)}
        return {**batch, "vectors": np.array(blobs, dtype=object), **extra}


# -- write, in the driver ------------------------------------------------------------------------


def _write(
    embedded: Any,
    sink: Sink,
    dimension: int,
    sparse: SparseEncoder | None,
    on_error: str,
    show: bool,
    started: float,
    multivector: int | None = None,
) -> Run:
    """Write the embedded documents in source order, with the single-process run's bookkeeping; `multivector`:
    the width of the ColBERT rows the actors sent (None: they sent none)."""
    run = Run(on_error, IngestReport())
    report = run.report
    with progress_bar("ingest (ray)", None, show) as bar:
        with writing(sink, report, started, sparse) as writer:
            for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
                pending: list[Pending] = []
                vectors: list[np.ndarray] = []
                multivectors: list[np.ndarray] = []
                for row in range(len(batch["id"])):
                    report.docs += 1
                    report.chunked += bool(batch["chunked"][row])
                    doc_id, status, source = str(batch["id"][row]), batch["status"][row], str(batch["source"][row])
                    where = str(batch["origin"][row]) or f"doc {doc_id!r}"
                    known = None if doc_id == _NO_ID else doc_id
                    if status == "bad":
                        run.bad(known, source, where, str(batch["error"][row]), empty=bool(batch["empty"][row]))
                        continue
                    try:
                        run.accept(doc_id, source, where)
                    except InputError as exc:
                        run.bad(doc_id, source, where, str(exc))
                        continue
                    if status == "unchanged":
                        report.unchanged += 1
                        continue
                    chunks = [_chunk(fields) for fields in json.loads(batch["chunks"][row])]
                    # the writer needs what the payload holds: id, metadata, source and the span offset
                    metadata = json.loads(batch["metadata"][row])
                    doc = Document(doc_id, "", metadata, source, where, None, int(batch["offset"][row]))
                    pending.append(Pending(doc, chunks, batch["content_hash"][row]))
                    vectors.append(np.frombuffer(batch["vectors"][row], dtype=np.float32).reshape(-1, dimension))
                    if multivector is not None:
                        flat = np.frombuffer(batch["multivectors"][row], dtype=np.float32).reshape(-1, multivector)
                        bounds = np.cumsum([0, *json.loads(batch["rows"][row])])
                        multivectors.extend(flat[a:b] for a, b in pairwise(bounds))
                if pending:
                    extras = Extras(multivectors) if multivector is not None else None
                    writer.put(pending, np.concatenate(vectors), extras)
                bar.update(len(batch["id"]))
                if show:
                    show_progress(bar, report)
        if show:  # the writes have finished: show what they stored
            show_progress(bar, report)
            bar.refresh()
    return run
