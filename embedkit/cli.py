"""`embedkit ingest`, `search`, `serve` and `models inspect`: the main jobs from a shell, offline by default."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from embedkit.chunking import STRATEGIES
from embedkit.errors import EmbedkitError, InputError, StoreError

__all__ = ["main"]

DEFAULT_QDRANT_PATH = "./qdrant"


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx"),
        help="local runtime: onnx = ONNX Runtime on CPU (extra `onnx`); auto (default, or $EMBEDKIT_BACKEND) "
        "picks it for float32 on CPU when installed",
    )
    parser.add_argument("--quantize", choices=("int8",), help="int8 weights on the ONNX backend (CPU)")


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--collection", required=True, help="Qdrant collection name")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--qdrant-path",
        default=os.environ.get("EMBEDKIT_QDRANT_PATH", DEFAULT_QDRANT_PATH),
        help="embedded local Qdrant store directory (default: $EMBEDKIT_QDRANT_PATH or ./qdrant)",
    )
    where.add_argument("--qdrant-url", help="Qdrant server URL, e.g. http://localhost:6333 (key: $QDRANT_API_KEY)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedkit", description="Embed text into Qdrant and search it.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what embedkit decides")
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="chunk, embed and upsert .md/.txt files (idempotent)")
    ingest.add_argument("paths", nargs="+", help="directories, text files or .jsonl files (id, text, metadata)")
    embedder = ingest.add_mutually_exclusive_group()
    embedder.add_argument("--model", help="model directory or hub id (default: all-MiniLM-L6-v2)")
    embedder.add_argument("--tei-url", help="embed through a TEI-compatible server (key: $EMBEDKIT_API_KEY)")
    ingest.add_argument(
        "--glob",
        "--pattern",
        dest="pattern",
        action="append",
        help="files to take from directories (default: *.md, *.txt)",
    )
    ingest.add_argument("--delete-missing", action="store_true", help="remove docs the source no longer has")
    ingest.add_argument("--reembed", action="store_true", help="allow replacing vectors made by another embedder")
    ingest.add_argument("--on-error", choices=("raise", "skip"), default="raise", help="bad documents: stop or skip")
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    ingest.add_argument("--chunk-tokens", type=int, help="tokens per chunk (default: the model's limit, at most 512)")
    ingest.add_argument("--overlap", type=int, help="tokens repeated between neighbouring chunks (default: 1/8)")
    ingest.add_argument("--strategy", choices=STRATEGIES, default="auto", help="how to split (default: auto)")
    ingest.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: Ray Data actors (needs embedkit[ray])",
    )
    ingest.add_argument("--ray-address", help="with --engine ray: the cluster to join (default: start a local one)")
    ingest.add_argument("--num-gpus", type=int, default=0, help="with --engine ray: GPU actors, one model per GPU")
    ingest.add_argument("--actors", type=int, help="with --engine ray and no GPUs: CPU actors (default 1)")
    _add_backend_options(ingest)
    _add_store_options(ingest)

    search = commands.add_parser("search", help="rank the collection's chunks against a query")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    search.add_argument("--model", help="override the model recorded in the collection")
    search.add_argument("--json", action="store_true", help="print results as JSON lines")
    _add_backend_options(search)
    search.add_argument(
        "--filter", action="append", default=[], metavar="KEY=VALUE", help="keep chunks whose metadata KEY is VALUE"
    )
    _add_store_options(search)

    serve = commands.add_parser("serve", help="serve a model over TEI's HTTP API (needs embedkit[server])")
    serve.add_argument("model", nargs="?", help="model directory or hub id (default: all-MiniLM-L6-v2)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--api-key",
        default=os.environ.get("EMBEDKIT_API_KEY"),
        help="require this bearer key (prefer the env EMBEDKIT_API_KEY: arguments show in `ps`)",
    )
    serve.add_argument("--served-model-name", help="model name reported by /info and /v1/embeddings")
    serve.add_argument("--max-client-batch-size", type=int, default=32, help="inputs per request (default 32)")
    serve.add_argument("--max-batch-tokens", type=int, default=16384, help="tokens per forward pass (default 16384)")
    serve.add_argument("--max-batch-requests", type=int, help="requests packed per forward pass (default: no limit)")
    serve.add_argument("--max-concurrent-requests", type=int, default=512, help="texts queued before 429")
    serve.add_argument("--max-input-length", type=int, help="tokens per input (default: the model's limit)")
    serve.add_argument("--payload-limit", type=int, default=2_000_000, help="request body bytes (default 2 MB)")
    serve.add_argument(
        "--body-timeout", type=float, default=10.0, help="seconds to receive a request body (default 10)"
    )
    serve.add_argument(
        "--max-connections", type=int, default=1024, help="open connections; more get 503 (default 1024)"
    )
    serve.add_argument(
        "--auto-truncate",
        choices=("true", "false"),
        default="true",
        help="cut over-long inputs when a request does not say (default true, as TEI >= 1.9)",
    )
    serve.add_argument("--dtype", choices=("float32", "float16", "bfloat16"))
    serve.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    _add_backend_options(serve)

    models = commands.add_parser("models", help="inspect model checkpoints")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    inspect = model_commands.add_parser("inspect", help="detected family, sizes, pooling, prompts, and why")
    inspect.add_argument("model", help="model directory or hub id")
    inspect.add_argument("--json", action="store_true", help="print as JSON")
    return parser


def _sink(args: argparse.Namespace):  # noqa: ANN202 - QdrantSink, imported lazily
    from embedkit.sinks.qdrant import QdrantSink

    if args.qdrant_url:
        return QdrantSink(args.collection, url=args.qdrant_url, api_key=os.environ.get("QDRANT_API_KEY"))
    return QdrantSink(args.collection, path=args.qdrant_path)


def _ingest(args: argparse.Namespace) -> int:
    from itertools import chain

    from embedkit.chunking import default_chunker
    from embedkit.ingest import DEFAULT_PATTERNS, ingest, load_directory, load_jsonl

    patterns = args.pattern or DEFAULT_PATTERNS
    for path in args.paths:
        if not os.path.exists(path):
            raise InputError(f"no such file or directory: {path}")
    if args.engine == "ray":
        return _ingest_ray(args, patterns)
    for flag, given in (("--ray-address", args.ray_address), ("--num-gpus", args.num_gpus), ("--actors", args.actors)):
        if given:
            raise InputError(f"{flag} needs --engine ray")
    if args.tei_url:
        from embedkit.remote import TEIClient

        embedder: Any = TEIClient(args.tei_url)
    else:
        from embedkit.runtime import load

        embedder = load(args.model, backend=args.backend, quantize=args.quantize)
    chunker = default_chunker(
        embedder, max_tokens=args.chunk_tokens, overlap_tokens=args.overlap, strategy=args.strategy
    )
    sink = _sink(args)
    docs = chain.from_iterable(
        load_jsonl(path) if path.endswith(".jsonl") else load_directory(path, patterns) for path in args.paths
    )
    try:
        report = ingest(
            docs,
            embedder,
            sink,
            chunker=chunker,
            reembed=args.reembed,
            on_error=args.on_error,
            delete_missing=args.delete_missing,
            progress=False if args.quiet else None,
        )
        _print_report(args, report, sink)
    finally:
        sink.close()
    return 0


def _ingest_ray(args: argparse.Namespace, patterns: Sequence[str]) -> int:
    from embedkit.distributed import ingest_ray

    if args.tei_url:
        raise InputError("--engine ray embeds with a local model in each actor; drop --tei-url or the engine")
    sink = _sink(args)
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
            num_gpus=args.num_gpus,
            num_actors=args.actors,
            ray_address=args.ray_address,
            progress=False if args.quiet else None,
        )
        _print_report(args, report, sink)
    finally:
        sink.close()
    return 0


def _print_report(args: argparse.Namespace, report: Any, sink: Any) -> None:
    print(f"{args.collection}: {report.summary()}; {sink.count()} points in the collection")
    if not args.quiet:
        print(report.table())
    for doc_id, reason in report.skipped:
        print(f"skipped {doc_id}: {reason}", file=sys.stderr)


def _filters(pairs: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE pairs as a metadata filter; a key given twice accepts either value."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--filter {pair!r}: expected KEY=VALUE")
        parsed: Any = int(value) if value.lstrip("-").isdigit() else value
        out[key] = (
            [*out[key], parsed] if isinstance(out.get(key), list) else ([out[key], parsed] if key in out else parsed)
        )
    return out


def _search(args: argparse.Namespace) -> int:
    from embedkit.runtime import load

    if args.k < 1:
        raise InputError(f"-k must be at least 1, got {args.k}")
    sink = _sink(args)
    try:
        if not sink.exists():
            hint = f"run `embedkit ingest ... --collection {args.collection}`"
            raise StoreError(f"collection {args.collection!r} does not exist; {hint}")
        recorded = sink.recorded_fingerprint() or {}
        quantize = args.quantize or recorded.get("quantize")  # queries as the collection's vectors were made
        embedder = load(args.model or recorded.get("model_id"), backend=args.backend, quantize=quantize)
        vector = embedder.embed_query(args.query, dimensions=recorded.get("dimensions"))
        hits = sink.search(vector, args.k, metadata_filter=_filters(args.filter))
    finally:
        sink.close()
    for rank, hit in enumerate(hits, 1):
        payload = hit.payload
        if args.json:
            print(json.dumps({"rank": rank, "score": hit.score, "id": hit.id, **payload}, ensure_ascii=False))
            continue
        snippet = " ".join(str(payload.get("page_content", "")).split())[:160]
        print(f"{rank}. {hit.score:.4f}  {payload.get('doc_id')} [chunk {payload.get('chunk_index')}]\n   {snippet}")
    if not hits:
        print("no results", file=sys.stderr)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from embedkit.runtime import load

    info = load(args.model, device="cpu").describe()
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    width = max(len(key) for key in info)
    for key, value in info.items():
        if key == "tasks":
            print(f"{key:<{width}}  " + ", ".join(f"{task}={prefix!r}" for task, prefix in value.items()))
        elif key == "detected_by":
            print(f"{key:<{width}}  " + "; ".join(value))
        else:
            print(f"{key:<{width}}  {value}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from embedkit.server import ServerSettings, serve

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


_COMMANDS = {"ingest": _ingest, "search": _search, "serve": _serve, "models": _inspect}


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


if __name__ == "__main__":
    sys.exit(main())
