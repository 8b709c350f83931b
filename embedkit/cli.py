"""`embedkit ingest`, `search`, `serve`, `models inspect` and `collections ...`: the main jobs from a shell,
offline by default."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from embedkit.chunking import STRATEGIES
from embedkit.errors import EmbedkitError, InputError, StoreError
from embedkit.ingestion.records import CHUNK_INDEX, DOC_ID, METADATA, PAGE_CONTENT
from embedkit.server.settings import DEFAULT_HOST, DEFAULT_PORT, ServerSettings

__all__ = ["main"]

DEFAULT_QDRANT_PATH = "./qdrant"


def _at_least(least: int) -> Any:
    """An argparse type: an int >= `least`, else argparse's own one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx"),
        help="local runtime: onnx = ONNX Runtime on CPU (extra `onnx`); auto (default, or $EMBEDKIT_BACKEND) "
        "picks it for float32 on CPU when installed",
    )
    parser.add_argument("--quantize", choices=("int8",), help="int8 weights on the ONNX backend (CPU)")


def _add_remote_options(parser: argparse.ArgumentParser, embedder: Any) -> None:
    # `embedder`: the mutually exclusive group of --model and --tei-url (argparse keeps its class private)
    embedder.add_argument("--tei-url", help="embed through a TEI-compatible server (key: $EMBEDKIT_API_KEY)")
    parser.add_argument(
        "--api",
        choices=("tei", "openai"),
        default="tei",
        help="with --tei-url: the server's API: tei (/embed, default) or openai (/v1/embeddings, e.g. vLLM)",
    )
    parser.add_argument("--model-name", help="with --api openai: the model name the service expects")


def _remote(args: argparse.Namespace) -> Any:
    """The TEIClient the --tei-url options describe, or None; --api / --model-name without it are errors."""
    if not args.tei_url:
        for flag, given in (("--api", args.api != "tei"), ("--model-name", args.model_name)):
            if given:
                raise InputError(f"{flag} goes with --tei-url")
        return None
    from embedkit.remote import TEIClient

    return TEIClient(args.tei_url, api=args.api, model=args.model_name)


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--collection", required=True, help="Qdrant collection name")
    _add_store_location(parser)


def _add_path_option(parser: Any, what: str) -> None:
    parser.add_argument(
        "--qdrant-path",
        default=os.environ.get("EMBEDKIT_QDRANT_PATH", DEFAULT_QDRANT_PATH),
        help=f"{what} (default: $EMBEDKIT_QDRANT_PATH or ./qdrant)",
    )


def _add_store_location(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    _add_path_option(where, "the embedded Qdrant store's directory")
    where.add_argument("--qdrant-url", help="Qdrant server URL, e.g. http://localhost:6333 (key: $QDRANT_API_KEY)")
    _add_engine_option(parser)


def _add_vector_names_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vector-names",
        choices=("embedkit", "langchain", "llamaindex"),
        default="embedkit",
        help="how a hybrid collection names its dense and sparse vectors: embedkit's (unnamed, 'sparse'), "
        "langchain-qdrant's ('', 'langchain-sparse') or LlamaIndex's ('text-dense', 'text-sparse-new')",
    )


def _add_engine_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--qdrant-engine",
        choices=("edge", "client-local"),
        help="the embedded store's engine: edge (Qdrant's own engine, the default for a new store) or "
        "client-local (qdrant-client's local mode); default: whichever the folder holds",
    )


def _index_field(text: str) -> tuple[str, str]:
    from embedkit.sinks.qdrant import INDEX_TYPES

    key, _, kind = text.partition(":")
    kind = kind or "keyword"
    if not key or kind not in INDEX_TYPES:
        raise argparse.ArgumentTypeError(f"expected KEY or KEY:TYPE with TYPE one of {', '.join(INDEX_TYPES)}")
    return key, kind


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("embedkit")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedkit", description="Embed text into Qdrant and search it.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what embedkit decides")
    parser.add_argument("--version", action="version", version=f"embedkit {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="chunk, embed and upsert .md/.txt files (idempotent)")
    ingest.add_argument("paths", nargs="+", help="directories, text files or .jsonl files (id, text, metadata)")
    embedder = ingest.add_mutually_exclusive_group()
    embedder.add_argument("--model", help="model directory or hub id (default: all-MiniLM-L6-v2)")
    _add_remote_options(ingest, embedder)
    ingest.add_argument(
        "--tokenizer",
        help="tokenizer.json or model folder to count chunk tokens with (for services without /tokenize, "
        "such as OpenAI-style ones); default: the embedder's own",
    )
    ingest.add_argument(
        "--glob",
        "--pattern",
        dest="pattern",
        action="append",
        help="files to take from directories (default: *.md, *.txt, *.rst; .jsonl files are read as records)",
    )
    ingest.add_argument(
        "--source",
        help="name of the source the paths belong to (default: each path as given); doc ids are SOURCE/relative "
        "path, so naming it keeps ids stable when the corpus moves",
    )
    ingest.add_argument(
        "--include-hidden", action="store_true", help="also read hidden files and folders (.git/, .x.md)"
    )
    ingest.add_argument(
        "--delete-missing", action="store_true", help="remove this source's stored docs that the source no longer has"
    )
    ingest.add_argument(
        "--force-delete",
        action="store_true",
        help="with --delete-missing: delete even when a path yields no documents (everything of its source)",
    )
    ingest.add_argument("--reembed", action="store_true", help="allow replacing vectors made by another embedder")
    ingest.add_argument("--on-error", choices=("raise", "skip"), default="raise", help="bad documents: stop or skip")
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    ingest.add_argument(
        "--chunk-tokens", type=_at_least(1), help="tokens per chunk (default: the model's limit, at most 512)"
    )
    ingest.add_argument(
        "--overlap", type=_at_least(0), help="tokens repeated between neighbouring chunks (default: 1/8)"
    )
    ingest.add_argument("--strategy", choices=STRATEGIES, default="auto", help="how to split (default: auto)")
    ingest.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: Ray Data actors (needs embedkit[ray])",
    )
    ingest.add_argument("--ray-address", help="with --engine ray: the cluster to join (default: start a local one)")
    ingest.add_argument("--num-gpus", type=int, default=0, help="with --engine ray: GPU actors, one model per GPU")
    ingest.add_argument(
        "--sparse",
        metavar="bm25|MODEL",
        help="also store a sparse vector per chunk for hybrid search: bm25 (Qdrant's BM25, as fastembed's "
        "Qdrant/bm25) or a SPLADE model; a collection without them gains them, its dense vectors kept",
    )
    ingest.add_argument(
        "--colbert",
        action="store_true",
        help="also store each chunk's ColBERT multivector (bge-m3's colbert_linear head) from the same forward "
        "pass, for `embedkit search --colbert`; a new collection gets the multivector, an existing one must have it",
    )
    _add_vector_names_option(ingest)
    ingest.add_argument(
        "--index-field",
        type=_index_field,
        action="append",
        default=[],
        metavar="KEY[:TYPE]",
        help="index metadata KEY for fast filters, TYPE keyword (default), integer, float or bool; repeatable",
    )
    ingest.add_argument("--actors", type=int, help="with --engine ray and no GPUs: CPU actors (default 1)")
    _add_backend_options(ingest)
    _add_store_options(ingest)

    search = commands.add_parser("search", help="rank the collection's chunks against a query")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    search_embedder = search.add_mutually_exclusive_group()
    search_embedder.add_argument("--model", help="override the model recorded in the collection")
    _add_remote_options(search, search_embedder)
    search.add_argument("--json", action="store_true", help="print results as JSON lines")
    _add_backend_options(search)
    search.add_argument(
        "--filter", action="append", default=[], metavar="KEY=VALUE", help="keep chunks whose metadata KEY is VALUE"
    )
    search.add_argument(
        "--hnsw-ef", type=_at_least(1), help="HNSW candidates per search: higher finds more (default: the store's)"
    )
    search.add_argument("--exact", action="store_true", help="compare with every vector instead of the HNSW index")
    search.add_argument(
        "--mode",
        choices=("dense", "sparse", "hybrid"),
        help="dense vectors, sparse vectors, or both fused (default: hybrid when the collection has sparse vectors)",
    )
    search.add_argument(
        "--fetch-k",
        type=_at_least(1),
        help="candidates the search keeps before fusion (hybrid) and before reranking (default max(4k, 20))",
    )
    search.add_argument(
        "--rerank",
        metavar="MODEL",
        help="reorder the --fetch-k candidates with this reranker: a model folder or hub id, or the URL of a "
        "server answering /rerank (TEI, `embedkit serve`)",
    )
    search.add_argument(
        "--colbert",
        action="store_true",
        help="reorder the --fetch-k candidates by MaxSim of the query's ColBERT vectors (the same bge-m3 model) "
        "against the stored multivectors (a collection ingested with --colbert)",
    )
    search.add_argument("--fusion", choices=("rrf", "dbsf"), default="rrf", help="hybrid: how to fuse (default rrf)")
    _add_vector_names_option(search)
    _add_store_options(search)

    # every default below is ServerSettings' (or serve()'s host and port): one source, so --help never lies
    defaults = ServerSettings()
    serve = commands.add_parser("serve", help="serve a model over TEI's HTTP API (needs embedkit[server])")
    serve.add_argument(
        "model",
        nargs="?",
        help="model directory or hub id (default: all-MiniLM-L6-v2); the folder picks the routes: /embed, "
        "/embed_sparse for a SPLADE folder, /rerank and /v1/rerank for a reranker (cross-encoder) folder",
    )
    serve.add_argument(
        "--host", default=DEFAULT_HOST, help=f"interface to bind (default {DEFAULT_HOST}: this machine only)"
    )
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    serve.add_argument(
        "--api-key",
        default=os.environ.get("EMBEDKIT_API_KEY"),
        help="require this bearer key (prefer the env EMBEDKIT_API_KEY: arguments show in `ps`)",
    )
    serve.add_argument("--served-model-name", help="model name reported by /info and /v1/embeddings")
    serve.add_argument(
        "--max-client-batch-size",
        type=int,
        default=defaults.max_client_batch_size,
        help=f"inputs per request (default {defaults.max_client_batch_size})",
    )
    serve.add_argument(
        "--max-batch-tokens",
        type=int,
        default=defaults.max_batch_tokens,
        help=f"the dynamic batcher's padded tokens per forward pass (default {defaults.max_batch_tokens})",
    )
    serve.add_argument(
        "--max-batch-requests",
        type=int,
        default=defaults.max_batch_requests,
        help="requests packed per forward pass (default: no limit)",
    )
    serve.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=defaults.max_concurrent_requests,
        help=f"embedding requests in flight before 429 (default {defaults.max_concurrent_requests})",
    )
    serve.add_argument(
        "--max-input-length",
        type=int,
        default=defaults.max_input_length,
        help="tokens per input (default: the model's limit)",
    )
    serve.add_argument(
        "--payload-limit",
        type=int,
        default=defaults.payload_limit,
        help=f"request body bytes (default {defaults.payload_limit / 1e6:g} MB)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=defaults.body_timeout,
        help=f"seconds to receive a request body (default {defaults.body_timeout:g})",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        help=f"open connections; more get 503 (default {defaults.max_connections})",
    )
    serve.add_argument(
        "--auto-truncate",
        nargs="?",
        const="true",
        choices=("true", "false"),
        default=str(defaults.auto_truncate).lower(),
        help="cut over-long inputs when a request does not say: --auto-truncate [true|false] "
        f"(default {str(defaults.auto_truncate).lower()}, "
        "as TEI >= 1.9); --no-auto-truncate refuses them",
    )
    serve.add_argument("--no-auto-truncate", dest="auto_truncate", action="store_const", const="false")
    serve.add_argument("--dtype", choices=("float32", "float16", "bfloat16"))
    serve.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    _add_backend_options(serve)

    models = commands.add_parser("models", help="inspect model checkpoints")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    inspect = model_commands.add_parser("inspect", help="detected family, sizes, pooling, prompts, and why")
    inspect.add_argument("model", help="model directory or hub id")
    inspect.add_argument("--json", action="store_true", help="print as JSON")
    _add_collections_commands(commands)
    return parser


def _add_collections_commands(commands: Any) -> None:
    collections = commands.add_parser("collections", help="list, inspect, drop, push or convert stored collections")
    command = collections.add_subparsers(dest="collections_command", required=True)
    listing = command.add_parser("list", help="the store's collections with their point counts")
    _add_store_location(listing)
    inspect = command.add_parser("inspect", help="a collection's embedder, counts, vectors and payload indexes")
    inspect.add_argument("collection")
    inspect.add_argument("--json", action="store_true", help="print as JSON")
    _add_store_location(inspect)
    drop = command.add_parser("drop", help="delete a collection (asks first)")
    drop.add_argument("collection")
    drop.add_argument("--yes", action="store_true", help="do not ask")
    _add_store_location(drop)
    push = command.add_parser(
        "push",
        help="copy an embedded collection (points, vectors, payloads, metadata) to a Qdrant server; resumable",
    )
    push.add_argument("collection")
    _add_path_option(push, "the embedded store to copy from")
    _add_engine_option(push)
    target = push.add_mutually_exclusive_group(required=True)
    target.add_argument("--qdrant-url", help="the Qdrant server to copy to, e.g. http://localhost:6333")
    target.add_argument("--to-path", help="or a qdrant-client local-mode folder to copy to (langchain-qdrant reads it)")
    push.add_argument(
        "--api-key",
        default=os.environ.get("QDRANT_API_KEY"),
        help="the server's API key (prefer the env QDRANT_API_KEY: arguments show in `ps`)",
    )
    push.add_argument("--to-collection", help="the collection's name there (default: the same)")
    push.add_argument("--batch-size", type=_at_least(1), default=256, help="points per write (default 256)")
    push.add_argument("--quiet", action="store_true", help="no progress bar")
    convert = command.add_parser(
        "convert", help="move a qdrant-client local-mode folder (an earlier embedkit's store) onto Qdrant Edge"
    )
    _add_path_option(convert, "the folder to convert")


def _sink(args: argparse.Namespace, collection: str | None = None, **options: Any):
    from embedkit.sinks.qdrant import QdrantSink

    name = collection or args.collection
    if args.qdrant_url:
        if args.qdrant_engine:
            raise InputError("--qdrant-engine is for an embedded store (--qdrant-path), not a server")
        return QdrantSink(name, url=args.qdrant_url, api_key=os.environ.get("QDRANT_API_KEY"), **options)
    return QdrantSink(name, path=args.qdrant_path, engine=args.qdrant_engine, **options)


def _named_vectors(args: argparse.Namespace) -> dict[str, Any]:
    """The sink options naming a hybrid collection's vectors as --vector-names says."""
    from embedkit.sinks.qdrant import VECTOR_NAME_PRESETS

    dense, sparse = VECTOR_NAME_PRESETS[args.vector_names]
    return {"vector_name": dense, "sparse_vector_name": sparse}


def _sparse_encoder(name: str | None) -> Any:
    if name is None:
        return None
    from embedkit.sparse import load_sparse

    return load_sparse(name)


def _ingest(args: argparse.Namespace) -> int:
    from embedkit.chunking import default_chunker
    from embedkit.ingestion import DEFAULT_PATTERNS, ingest, load_paths, source_of

    patterns = args.pattern or DEFAULT_PATTERNS
    total = _check_paths(args, patterns)
    if args.engine == "ray":
        return _ingest_ray(args, patterns)
    for flag, given in (("--ray-address", args.ray_address), ("--num-gpus", args.num_gpus), ("--actors", args.actors)):
        if given:
            raise InputError(f"{flag} needs --engine ray")
    embedder = _remote(args)
    if embedder is None:
        from embedkit.local.loader import load

        embedder = load(args.model, backend=args.backend, quantize=args.quantize)
    chunker = default_chunker(
        embedder,
        tokenizer=args.tokenizer,
        max_tokens=args.chunk_tokens,
        overlap_tokens=args.overlap,
        strategy=args.strategy,
    )
    sparse = _sparse_encoder(args.sparse)
    sink = _sink(args, index_fields=dict(args.index_field), **_named_vectors(args))
    docs = load_paths(args.paths, patterns, source=args.source, include_hidden=args.include_hidden)
    try:
        report = ingest(
            docs,
            embedder,
            sink,
            chunker=chunker,
            sources=[args.source or source_of(path) for path in args.paths],
            reembed=args.reembed,
            on_error=args.on_error,
            delete_missing=args.delete_missing,
            force_delete=args.force_delete,
            progress=False if args.quiet else None,
            total=total,
            sparse=sparse,
            multivector=args.colbert,
        )
        _print_report(args, report, sink)
    finally:
        sink.close()
    return 0


def _check_paths(args: argparse.Namespace, patterns: Sequence[str]) -> int | None:
    """Every path exists; one that yields no files is a warning, or with --delete-missing an error (deleting
    everything its source stored because of a typo in --glob is not what anyone means) unless forced.
    Returns the number of documents when the files tell it (no .jsonl among them), for the progress bar."""
    from embedkit.ingestion import list_files

    total: int | None = 0
    if args.force_delete and not args.delete_missing:
        raise InputError("--force-delete goes with --delete-missing")
    for path in args.paths:
        if not os.path.exists(path):
            raise InputError(f"no such file or directory: {path}")
        files = list_files(path, patterns, include_hidden=args.include_hidden)
        if total is not None:
            total = None if any(file.suffix.lower() == ".jsonl" for file, _ in files) else total + len(files)
        if os.path.isdir(path) and not files:
            what = f"{path} holds no files matching {', '.join(patterns)}"
            if args.delete_missing and not args.force_delete:
                raise InputError(
                    f"{what}; with --delete-missing that would delete its whole source (nothing was deleted). "
                    "Check the path and --glob (patterns are case-sensitive), or add --force-delete"
                )
            print(f"embedkit ingest: warning: {what}", file=sys.stderr)
    return total


def _ingest_ray(args: argparse.Namespace, patterns: Sequence[str]) -> int:
    from embedkit.ingestion import ingest_ray

    if args.tei_url or args.tokenizer:
        raise InputError(
            "--engine ray embeds and counts tokens with a local model in each actor; drop --tei-url / --tokenizer "
            "or the engine"
        )
    sparse = _sparse_encoder(args.sparse)
    sink = _sink(args, index_fields=dict(args.index_field), **_named_vectors(args))
    try:
        report = ingest_ray(
            args.paths,
            sink,
            model=args.model,
            load_options={"backend": args.backend, "quantize": args.quantize},
            chunk_tokens=args.chunk_tokens,
            overlap_tokens=args.overlap,
            strategy=args.strategy,
            patterns=patterns,
            reembed=args.reembed,
            on_error=args.on_error,
            delete_missing=args.delete_missing,
            force_delete=args.force_delete,
            source_name=args.source,
            include_hidden=args.include_hidden,
            num_gpus=args.num_gpus,
            num_actors=args.actors,
            ray_address=args.ray_address,
            progress=False if args.quiet else None,
            sparse=sparse,
            multivector=args.colbert,
        )
        _print_report(args, report, sink)
    finally:
        sink.close()
    return 0


def _print_report(args: argparse.Namespace, report: Any, sink: Any) -> None:
    print(f"{args.collection}: {report.summary()}; {sink.count()} points in the collection")
    if report.sparse_filled:
        print(f"{report.sparse_filled} stored points given their sparse vector (their dense vectors kept)")
    if not args.quiet:
        print(report.table())
    # each skipped document was already logged as a warning when it was skipped; the summary counts them


def _filters(pairs: Sequence[str]) -> dict[str, list[Any]]:
    """KEY=VALUE pairs as a filter for QdrantSink.search: each key to the values its text may have been
    stored as (see `_readings`); a key given twice accepts either value. Keys are passed on as given:
    doc_id and source name embedkit's own fields, metadata.KEY or any other KEY a metadata key."""
    out: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--filter {pair!r}: expected KEY=VALUE")
        accepted = out.setdefault(key, [])
        accepted.extend(reading for reading in _readings(value) if not _listed(reading, accepted))
    return out


_NUMBER = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")  # as JSON writes numbers: no nan, inf, 1_000


def _readings(value: str) -> list[str | int | float | bool]:
    """What a value typed on the command line may have been stored as in JSON: the string itself, and
    the boolean (true / false, any case) or the number it spells. `year=2024` then finds "2024" and
    2024, `draft=true` finds true and "true", `score=0.5` finds 0.5."""
    readings: list[str | int | float | bool] = [value]
    if value.lower() in ("true", "false"):
        readings.append(value.lower() == "true")
    elif _NUMBER.fullmatch(value):
        readings.append(int(value) if re.fullmatch(r"[+-]?\d+", value) else float(value))
    return readings


def _listed(value: Any, accepted: list[Any]) -> bool:
    # by type too: 1 == True and 1 == 1.0 in Python, but each matches different stored values
    return any(type(value) is type(other) and value == other for other in accepted)


def _search(args: argparse.Namespace) -> int:
    from embedkit.ingestion import check_reader
    from embedkit.local.loader import load

    if args.k < 1:
        raise InputError(f"-k must be at least 1, got {args.k}")
    if args.colbert and args.rerank:
        raise InputError("--colbert and --rerank both reorder the candidates: give one")
    metadata_filter = _filters(args.filter)  # a malformed --filter fails before the model loads
    _require_store(args)
    sink = _sink(args, hnsw_ef=args.hnsw_ef, exact=args.exact, **_named_vectors(args))
    try:
        if not sink.exists():
            hint = f"run `embedkit ingest ... --collection {args.collection}`"
            raise StoreError(f"collection {args.collection!r} does not exist; {hint}")
        recorded = sink.recorded_fingerprint() or {}
        embedder = _remote(args)
        if embedder is None:
            quantize = args.quantize or recorded.get("quantize")  # queries as the collection's vectors were made
            embedder = load(args.model or recorded.get("model_id"), backend=args.backend, quantize=quantize)
        check_reader(sink, embedder)  # other weights under the recorded name would rank nonsense
        mode = args.mode or ("hybrid" if sink.sparse_vector_name in sink.sparse_vectors() else "dense")
        sparse_vector = None
        if mode != "dense":
            from embedkit.sparse import encoder_for_collection

            sparse_vector = encoder_for_collection(sink).embed_query(args.query)
        vector = embedder.embed_query(args.query, dimensions=recorded.get("dimensions")) if mode != "sparse" else None
        hits = sink.search(
            vector,
            args.k,
            sparse_vector=sparse_vector,
            mode=mode,
            fetch_k=args.fetch_k,
            fusion=args.fusion,
            metadata_filter=metadata_filter,
            reranker=_reranker(args),
            query_text=args.query,
            multivector=_query_multivector(args, sink, embedder),
        )
    finally:
        sink.close()
    for rank, hit in enumerate(hits, 1):
        payload = hit.payload
        if args.json:
            print(json.dumps({"rank": rank, "score": hit.score, "id": hit.id, **payload}, ensure_ascii=False))
            continue
        snippet = " ".join(str(payload.get(PAGE_CONTENT, "")).split())[:160]
        print(f"{rank}. {hit.score:.4f}  {_label(hit)}\n   {snippet}")
    if not hits:
        print("no results", file=sys.stderr)
    return 0


def _query_multivector(args: argparse.Namespace, sink: Any, embedder: Any) -> Any:
    """The --colbert query's ColBERT rows [m, D], from the model that wrote the collection's multivectors;
    None without --colbert. StoreError when the collection records no head or another one."""
    if not args.colbert:
        return None
    from embedkit.ingestion import MULTIVECTOR_COMPARED, multivector_fingerprint

    recorded = sink.multivector_encoder()
    if recorded is None:
        raise StoreError(
            f"collection {args.collection!r} records no ColBERT multivectors; ingest it with --colbert first"
        )
    if not hasattr(embedder, "embed_multivector"):
        raise InputError("--colbert embeds the query with a local bge-m3 model; drop --tei-url")
    wanted = multivector_fingerprint(embedder, task=recorded.get("task"))
    if wanted is None:
        raise InputError(f"{embedder.model_id!r} has no ColBERT head (colbert_linear.pt): --colbert needs bge-m3's")
    differing = [key for key in MULTIVECTOR_COMPARED if key != "task" and recorded.get(key) != wanted.get(key)]
    if differing:
        raise StoreError(
            f"collection {args.collection!r} holds multivectors of {recorded.get('name')!r}, and "
            f"{embedder.model_id!r}'s ColBERT head differs ({', '.join(differing)}): its query rows would not "
            "compare. Search with that model."
        )
    return embedder.embed_multivector([args.query], task=embedder.query_task)[0]


def _reranker(args: argparse.Namespace) -> Any:
    """The --rerank reranker: a client of the server at a URL, or the model loaded here; None without it."""
    if not args.rerank:
        return None
    if re.match(r"https?://", args.rerank):
        from embedkit.remote import TEIClient

        return TEIClient(args.rerank)
    from embedkit.rerank import load_reranker

    return load_reranker(args.rerank, backend=args.backend)


def _require_store(args: argparse.Namespace) -> None:
    if not args.qdrant_url and not os.path.exists(args.qdrant_path):  # opening it would create an empty store
        raise StoreError(f"no Qdrant store at {args.qdrant_path}; ingest first, or give --qdrant-path")


def _label(hit: Any) -> str:
    """Which chunk a hit is: its doc and chunk index, or for a point another tool wrote (langchain-qdrant's
    add_texts stores only page_content and metadata) its point id and its metadata's source, if any."""
    payload = hit.payload
    if payload.get(DOC_ID) is not None:
        index = payload.get(CHUNK_INDEX)
        return f"{payload[DOC_ID]}" + (f" [chunk {index}]" if index is not None else "")
    metadata = payload.get(METADATA)
    source = metadata.get("source") if isinstance(metadata, dict) else None
    return f"point {hit.id}" + (f" (source {source})" if source is not None else "")


def _inspect(args: argparse.Namespace) -> int:
    from embedkit.local.loader import load

    info = load(args.model, device="cpu").describe()
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    width = max(len(key) for key in info)
    for key, value in info.items():
        if key == "tasks":
            value = ", ".join(f"{task}={prefix!r}" for task, prefix in info["tasks"].items())
        elif key == "detected_by":
            value = "; ".join(info["detected_by"])
        elif key == "heads":
            value = "; ".join(info["heads"]) or "-"
        print(f"{key:<{width}}  {value}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from embedkit.server import serve

    for name in ("max_client_batch_size", "max_batch_tokens", "max_batch_requests", "max_input_length", "port"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    settings = ServerSettings(
        served_model_name=args.served_model_name,
        api_key=args.api_key or None,
        max_client_batch_size=args.max_client_batch_size,
        max_batch_tokens=args.max_batch_tokens,
        max_batch_requests=args.max_batch_requests,
        max_concurrent_requests=args.max_concurrent_requests,
        max_input_length=args.max_input_length,
        payload_limit=args.payload_limit,
        body_timeout=args.body_timeout,
        max_connections=args.max_connections,
        auto_truncate=args.auto_truncate == "true",
    )
    serve(
        args.model,
        host=args.host,
        port=args.port,
        settings=settings,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        quantize=args.quantize,
    )
    return 0


def _collections(args: argparse.Namespace) -> int:
    action = args.collections_command
    if action == "convert":
        return _convert(args)
    if action == "push":
        return _push(args)
    _require_store(args)
    if action == "list":
        return _list_collections(args)
    with _sink(args, args.collection) as sink:
        if not sink.exists():
            raise StoreError(f"collection {args.collection!r} does not exist at {args.qdrant_url or args.qdrant_path}")
        if action == "inspect":
            return _inspect_collection(args, sink)
        return _drop_collection(args, sink)


def _list_collections(args: argparse.Namespace) -> int:
    with _sink(args, "_") as store:  # any name: the store is what is listed
        names = store.collection_names()
    if not names:
        print("no collections", file=sys.stderr)
    for name in names:
        with _sink(args, name) as sink:
            fingerprint = sink.recorded_fingerprint() or {}
            model = fingerprint.get("model_id", "-") if isinstance(fingerprint, dict) else "-"
            print(f"{name}\t{sink.count()} points\t{sink.engine}\t{model}")
    return 0


def _inspect_collection(args: argparse.Namespace, sink: Any) -> int:
    from embedkit.sinks.collections import PUSH_KEY

    info: dict[str, Any] = dict(sink.info())
    push_state = sink.metadata().get(PUSH_KEY)
    if push_state:
        info["unfinished_push"] = push_state
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    fingerprint = info.pop("fingerprint") or {}
    width = max(len(key) for key in [*info, *fingerprint]) + 2
    for key, value in info.items():
        shown = ", ".join(f"{k or '(unnamed)'}={v}" for k, v in value.items()) if isinstance(value, dict) else value
        print(f"{key:<{width}}  {shown}")
    print("embedder:")
    for key, value in fingerprint.items():
        print(f"  {key:<{width - 2}}  {value}")
    return 0


def _drop_collection(args: argparse.Namespace, sink: Any) -> int:
    where = args.qdrant_url or args.qdrant_path
    if not args.yes:
        if not sys.stdin.isatty():
            raise InputError(f"drop {args.collection!r}: no terminal to ask on; add --yes to drop it")
        answer = input(f"drop collection {args.collection!r} ({sink.count()} points) at {where}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing dropped", file=sys.stderr)
            return 1
    sink.drop()
    print(f"dropped {args.collection!r} at {where}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from embedkit.sinks.collections import push
    from embedkit.sinks.qdrant import QdrantSink

    if not os.path.exists(args.qdrant_path):
        raise StoreError(f"no Qdrant store at {args.qdrant_path}; give --qdrant-path")
    name = args.to_collection or args.collection
    with QdrantSink(args.collection, path=args.qdrant_path, engine=args.qdrant_engine) as source:
        if not source.exists():
            raise StoreError(f"collection {args.collection!r} does not exist at {args.qdrant_path}")
        if args.qdrant_url:
            target = QdrantSink(name, url=args.qdrant_url, api_key=args.api_key, batch_size=args.batch_size)
        else:
            target = QdrantSink(name, path=args.to_path, engine="client-local", batch_size=args.batch_size)
        with target, tqdm(total=source.count(), unit="point", disable=args.quiet, desc="push") as bar:
            report = push(source, target, page_size=args.batch_size, progress=lambda n: bar.update(n - bar.n))
    print(report.summary())
    return 0


def _convert(args: argparse.Namespace) -> int:
    from embedkit.sinks.collections import convert_folder

    backup = convert_folder(args.qdrant_path)
    print(f"{args.qdrant_path} now holds Qdrant Edge collections; the local-mode original is at {backup}")
    return 0


_COMMANDS = {"ingest": _ingest, "search": _search, "serve": _serve, "models": _inspect, "collections": _collections}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `embedkit` command; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return _COMMANDS[args.command](args)
    except EmbedkitError as exc:
        print(f"embedkit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        print(f"embedkit {args.command}: {_interrupted(args.command, interrupt)}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a Ctrl-C
    except BrokenPipeError:  # `embedkit search ... | head` closed the pipe: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush is quiet too
        return 141  # 128 + SIGPIPE, as the shell reports it


def _interrupted(command: str, interrupt: KeyboardInterrupt) -> str:
    """One line for a Ctrl-C: for ingest, what the run stored before it stopped (the pipeline attaches
    its IngestReport as `.report`) and that running it again resumes, as every complete doc is skipped."""
    if command != "ingest":
        return "interrupted"
    report = getattr(interrupt, "report", None)
    stored = ""
    if report is not None:
        stored = f"; {report.embedded} docs stored complete before it stopped ({report.summary()})"
    return f"interrupted{stored}; run the same command again to resume where it stopped"


if __name__ == "__main__":
    sys.exit(main())
