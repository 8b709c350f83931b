"""Scale-out ingestion on Ray Data: the single-process pipeline's stages as one streaming dataset.

    read     each source file through the same loaders as `embedkit ingest` (Ray tasks)
    prepare  check, chunk and hash each document; drop the ones the collection already holds
             complete (actors holding only the tokenizer)
    embed    an actor pool, one model per actor, on CPU or one GPU each
    write    in the driver, through embedkit.ingest's writer: the same point ids, payloads, write
             order (upsert, delete surplus, set the hash) and report as the single-process run

Unchanged documents are known before anything is embedded: the driver reads the collection's
complete documents once into a sorted array of 16-byte digests of (doc id, content hash), which
every prepare actor shares through Ray's object store. Writes stay in the driver because the
embedded Qdrant store can be opened by one process only; see docs/scale.md for what that costs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from embedkit.chunking import Chunk, Chunker, Strategy, default_chunker
from embedkit.errors import EmbedkitError, InputError, MissingDependencyError
from embedkit.ingest import (
    DEFAULT_PATTERNS,
    Document,
    IngestReport,
    Unreadable,
    _content_hash,
    _finish,
    _Pending,
    _writing,
    check_document,
    fingerprint,
    id_key,
    list_files,
    load_jsonl,
    read_document,
)
from embedkit.sinks.base import Sink

__all__ = ["ingest_ray", "DEFAULT_BATCH_DOCS"]

log = logging.getLogger(__name__)

DEFAULT_BATCH_DOCS = 64  # documents per actor call; the embedder then batches their chunks by tokens
_KEY = np.dtype("S16")
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
) -> IngestReport:
    """Ingest `source` into `sink` on a Ray cluster; the same points and report as `embedkit.ingest`.

    `source`: a ray.data.Dataset with `id_field`, `text_field` and optional `metadata_field` columns
    (metadata as a struct / map, or JSON text to keep it exactly: Arrow fills keys a row lacks with
    null), or paths Ray can read: directories and text files (`patterns`, id = path relative to the
    directory, as load_directory), .jsonl files (as load_jsonl) and .parquet files (columns as for a
    Dataset). Each file is read by one task, so give large corpora as many files.

    `model` and `load_options` (embedkit.load's keywords: dtype, backend, quantize, ...) are loaded
    once per actor. `num_gpus`: embed on that many GPU actors, one GPU each; with 0, on `num_actors`
    CPU actors (default 1) of `cpus_per_actor` threads (default: the cluster's CPUs shared out).
    `prepare_actors` chunk and hash (default: one per embed actor). `ray_address` connects to a
    cluster (default: the one this process is connected to, else a local one started and stopped
    here). The other keywords are embedkit.ingest's and the Chunker's.
    """
    _check_options(on_error, num_gpus, num_actors, cpus_per_actor, prepare_actors, batch_docs)
    ray = _import_ray()
    if not isinstance(source, ray.data.Dataset):
        source = _source_paths(source)
    started = time.perf_counter()
    owns_cluster = not ray.is_initialized()
    if owns_cluster:
        ray.init(address=ray_address, include_dashboard=False, logging_level=logging.WARNING)
    elif ray_address is not None:
        log.warning("already connected to a Ray cluster; ray_address=%r is not used", ray_address)
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    show = sys.stderr.isatty() if progress is None else progress
    # documents reach the driver in source order, so "first occurrence wins" for a repeated id holds
    context.execution_options.preserve_order = True
    context.enable_progress_bars = show
    data_log = logging.getLogger("ray.data")
    saved_level = data_log.level
    if not show:  # quiet means quiet: no per-dataset execution plans either
        data_log.setLevel(logging.WARNING)
    try:
        gpus = num_gpus
        actors = gpus or num_actors or 1
        cpus = cpus_per_actor or (1 if gpus else max(1, int(ray.cluster_resources().get("CPU", 1)) // actors))
        docs = _read(ray, source, tuple(patterns), id_field, text_field, metadata_field)
        embedder = _Embedder(model, dict(load_options or {}), task, dimensions, normalize, threads=cpus)
        plan = _describe(ray, embedder, gpus, cpus, chunk_tokens, overlap_tokens, strategy)
        print_ = plan["fingerprint"]
        sink.prepare(print_["dimension"], print_, reembed=reembed)  # a mismatch fails before any work
        complete = ray.put(_complete_keys(sink))
        prepared = docs.map_batches(
            _Prepare,
            fn_constructor_kwargs={
                "budget": plan["budget"],
                "settings": plan["settings"],
                "fingerprint": print_,
                "task": task,
                "complete": complete,
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
        return _write(embedded, sink, plan["dimension"], on_error, delete_missing, show, started)
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
        import ray.data  # noqa: F401
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
    ) -> None:
        self.model = None if model is None else os.fspath(model)
        self.load_options = load_options
        self.task = task
        self.dimensions = dimensions
        self.normalize = normalize
        self.threads = threads

    def load(self) -> Any:
        import torch

        from embedkit.runtime import load

        # an actor shares its node with others: use the CPUs it was given, not every core
        torch.set_num_threads(self.threads)
        os.environ["EMBEDKIT_NUM_THREADS"] = str(self.threads)
        return load(self.model, **self.load_options)

    def embed(self, embedder: Any, texts: list[str]) -> np.ndarray:
        return embedder.embed(texts, task=self.task, dimensions=self.dimensions, normalize=self.normalize)


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
    probe = embedder.embed(loaded, ["dimension probe"])  # bad task / dimensions fail here, not mid-run
    return {
        "fingerprint": fingerprint(
            loaded, task=embedder.task, dimensions=embedder.dimensions, normalize=embedder.normalize
        ),
        "dimension": int(probe.shape[1]),
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


# -- what the collection already holds -----------------------------------------------------------


def _doc_key(doc_id: str, content_hash: str) -> bytes:
    return hashlib.blake2b(f"{doc_id}\0{content_hash}".encode(), digest_size=16).digest()


def _complete_keys(sink: Sink) -> np.ndarray:
    """Sorted digests of (doc id, content hash) for every doc whose chunk_count points all carry its hash.

    16 bytes per point while reading, 16 per complete doc after: 100M docs fit in 1.6 GB.
    """
    hashed_points = getattr(sink, "hashed_points", None)
    if hashed_points is None:
        raise InputError(f"{type(sink).__name__} cannot list its hashed points; scale-out ingestion needs QdrantSink")
    keys: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    page_keys: list[bytes] = []
    page_counts: list[int] = []
    for doc_id, content_hash, chunk_count in hashed_points():
        page_keys.append(_doc_key(doc_id, content_hash))
        page_counts.append(chunk_count)
        if len(page_keys) >= 65536:
            keys.append(np.array(page_keys, dtype=_KEY))
            counts.append(np.array(page_counts, dtype=np.int64))
            page_keys, page_counts = [], []
    keys.append(np.array(page_keys, dtype=_KEY))
    counts.append(np.array(page_counts, dtype=np.int64))
    all_keys, all_counts = np.concatenate(keys), np.concatenate(counts)
    unique, first, seen = np.unique(all_keys, return_index=True, return_counts=True)
    return unique[seen == all_counts[first]]


# -- read: sources to documents ------------------------------------------------------------------


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


def _read(
    ray: Any, source: Any, patterns: tuple[str, ...], id_field: str, text_field: str, metadata_field: str | None
) -> Any:
    """A dataset of documents: columns id, text, metadata (JSON) and error ('' when readable)."""
    columns = {"id_field": id_field, "text_field": text_field, "metadata_field": metadata_field}
    if isinstance(source, ray.data.Dataset):
        return source.map_batches(_rows_to_docs, fn_kwargs=columns, batch_format="pyarrow", num_cpus=0)
    paths: list[Path] = source
    files: list[dict[str, str]] = []
    for path in paths:
        if path.suffix in (".jsonl", ".parquet"):
            files.append({"path": str(path), "doc_id": "", "kind": path.suffix[1:]})
        else:
            files.extend({"path": str(p), "doc_id": i, "kind": "text"} for p, i in list_files(path, patterns))
    if not files:
        raise InputError(f"no files matching {', '.join(patterns)} under {', '.join(map(str, paths))}")
    # one row per file; a task reads its file with the single-process loaders (same ids, same errors)
    listing = ray.data.from_items(files, override_num_blocks=min(len(files), 256))
    return listing.map_batches(_files_to_docs, fn_kwargs=columns, batch_size=1, batch_format="numpy", num_cpus=0)


def _doc_rows(items: Iterable[Document | Unreadable]) -> dict[str, np.ndarray]:
    rows: dict[str, list[str]] = {"id": [], "text": [], "metadata": [], "error": []}
    for item in items:
        if isinstance(item, Unreadable):
            row = (item.id, "", "{}", item.reason)
        else:
            try:
                check_document(item, f"doc {item.id!r}")
                row = (item.id, item.text, json.dumps(item.metadata, ensure_ascii=False, default=str), "")
            except InputError as exc:
                row = (item.id, "", "{}", str(exc))
        for column, value in zip(("id", "text", "metadata", "error"), row, strict=True):
            rows[column].append(value)
    return {column: np.array(values, dtype=object) for column, values in rows.items()}


def _files_to_docs(batch: dict[str, np.ndarray], **columns: str | None) -> Iterator[dict[str, np.ndarray]]:
    for path, doc_id, kind in zip(batch["path"], batch["doc_id"], batch["kind"], strict=True):
        if kind == "jsonl":
            loaded = load_jsonl(path, **columns)  # type: ignore[arg-type]
            while window := list(islice(loaded, 1024)):
                yield _doc_rows(window)
        elif kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            for record_batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                yield _rows_to_docs(pa.Table.from_batches([record_batch]), **columns)  # type: ignore[arg-type]
        else:
            yield _doc_rows([read_document(Path(path), str(doc_id))])


def _rows_to_docs(table: Any, *, id_field: str, text_field: str, metadata_field: str | None) -> dict[str, np.ndarray]:
    names = set(table.column_names)
    for needed in (id_field, text_field):
        if needed not in names:
            raise InputError(f"the dataset has no {needed!r} column (columns: {', '.join(sorted(names))})")
    ids = table.column(id_field).to_pylist()
    texts = table.column(text_field).to_pylist()
    metadata = table.column(metadata_field).to_pylist() if metadata_field in names else [None] * len(ids)
    items: list[Document | Unreadable] = []
    for doc_id, text, meta in zip(ids, texts, metadata, strict=True):
        if doc_id is None:
            items.append(Unreadable(_NO_ID, f"a row has no {id_field!r}"))
            continue
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except ValueError as exc:
                meta = exc
        if isinstance(meta, list):  # Arrow's map type: a list of (key, value) pairs
            meta = dict(meta)
        if meta is not None and not isinstance(meta, dict):
            items.append(Unreadable(str(doc_id), f"doc {str(doc_id)!r}: {metadata_field!r} must be an object"))
            continue
        items.append(Document(str(doc_id), text, dict(meta or {})))
    return _doc_rows(items)


# -- prepare: chunk, hash, skip what is complete -------------------------------------------------


class _Prepare:
    """Chunks and hashes documents; marks each bad, unchanged, or pending (to embed)."""

    def __init__(
        self,
        budget: _TokenBudget,
        settings: dict[str, Any],
        fingerprint: dict[str, Any],
        task: str | None,
        complete: Any,
    ) -> None:
        import ray

        self._chunker = Chunker(
            budget,
            settings["max_tokens"],
            overlap_tokens=settings["overlap_tokens"],
            strategy=settings["strategy"],
            task=task,
        )
        if self._chunker.settings != settings:  # would give other chunks and hashes than the driver's plan
            raise RuntimeError(f"chunker settings {self._chunker.settings} differ from the plan's {settings}")
        self._fingerprint = fingerprint
        self._complete = ray.get(complete) if isinstance(complete, ray.ObjectRef) else complete

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[Any]] = {"status": [], "content_hash": [], "chunks": []}
        rows = zip(batch["id"], batch["text"], batch["metadata"], batch["error"], strict=True)
        for doc_id, text, metadata, error in rows:
            status, content_hash, chunks = "bad", "", []
            if not error:
                doc = Document(str(doc_id), str(text), json.loads(metadata))
                content_hash = _content_hash(doc, self._chunker.settings, self._fingerprint)
                key = np.array(_doc_key(doc.id, content_hash), dtype=_KEY)
                at = int(np.searchsorted(self._complete, key))
                if at < len(self._complete) and self._complete[at] == key:
                    status = "unchanged"
                else:
                    status, chunks = "pending", self._chunker.split(doc.text)
            out["status"].append(status)
            out["content_hash"].append(content_hash)
            out["chunks"].append(json.dumps([_chunk_fields(c) for c in chunks], ensure_ascii=False))
        return {
            "id": batch["id"],
            "metadata": batch["metadata"],
            "error": batch["error"],
            **{column: np.array(values, dtype=object) for column, values in out.items()},
        }


def _chunk_fields(chunk: Chunk) -> list[Any]:
    return [chunk.text, chunk.start, chunk.end, chunk.index, chunk.token_count, list(chunk.headings)]


def _chunk(fields: list[Any]) -> Chunk:
    text, start, end, index, token_count, headings = fields
    return Chunk(text, start, end, index, token_count, tuple(headings))


# -- embed ---------------------------------------------------------------------------------------


class _EmbedActor:
    """One model per actor; embeds the pending documents' chunks, passes the rest through."""

    def __init__(self, embedder: _Embedder) -> None:
        self._spec = embedder
        self._embedder = embedder.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        statuses = zip(batch["status"], batch["chunks"], strict=True)
        chunk_lists = [json.loads(chunks) if status == "pending" else [] for status, chunks in statuses]
        texts = [fields[0] for chunks in chunk_lists for fields in chunks]
        vectors = self._spec.embed(self._embedder, texts) if texts else np.zeros((0, 0), np.float32)
        blobs, cursor = [], 0
        for chunks in chunk_lists:
            blobs.append(np.ascontiguousarray(vectors[cursor : cursor + len(chunks)], dtype=np.float32).tobytes())
            cursor += len(chunks)
        return {**batch, "vectors": np.array(blobs, dtype=object)}


# -- write, in the driver ------------------------------------------------------------------------


def _write(
    embedded: Any,
    sink: Sink,
    dimension: int,
    on_error: str,
    delete_missing: bool,
    show: bool,
    started: float,
) -> IngestReport:
    report = IngestReport()
    seen: set[bytes] = set()
    kept_ids: list[str] | None = [] if delete_missing else None
    with _writing(sink, report, started) as writer:
        with tqdm(desc="ingest (ray)", unit="doc", disable=not show) as bar:
            for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
                pending: list[_Pending] = []
                vectors: list[np.ndarray] = []
                for row in range(len(batch["id"])):
                    report.docs += 1
                    doc_id, status = str(batch["id"][row]), batch["status"][row]
                    reason = batch["error"][row] if status == "bad" else ""
                    key = id_key(doc_id)
                    if not reason and key in seen:
                        reason = f"doc id {doc_id!r} was already seen in this run"
                    if reason:
                        if on_error == "raise":
                            raise InputError(reason)
                        report.skipped.append((doc_id, reason))
                        log.warning("skipped %s: %s", doc_id, reason)
                        continue
                    seen.add(key)
                    if kept_ids is not None:
                        kept_ids.append(doc_id)
                    if status == "unchanged":
                        report.unchanged += 1
                        continue
                    chunks = [_chunk(fields) for fields in json.loads(batch["chunks"][row])]
                    doc = Document(doc_id, "", json.loads(batch["metadata"][row]))  # the writer needs id + metadata
                    pending.append(_Pending(doc, chunks, batch["content_hash"][row]))
                    vectors.append(np.frombuffer(batch["vectors"][row], dtype=np.float32).reshape(-1, dimension))
                if pending:
                    writer.put(pending, np.concatenate(vectors))
                bar.update(len(batch["id"]))
    return _finish(sink, report, kept_ids, started)
