"""Hybrid retrieval: BM25 encoding speed against dense embedding, and the quality of dense, BM25 and hybrid search.

    python benchmarks/hybrid.py                      # speed on 1024 texts, quality on both sets
    python benchmarks/hybrid.py --skip-quality       # speed only
    python benchmarks/hybrid.py --pairs 500          # fewer docstring pairs

Speed: the default dense model (`embedkit.load()`: all-MiniLM-L6-v2, on the CPU ONNX Runtime over all
CPUs, and again capped to one thread) and `BM25Encoder` (one thread: the engine embeds one text per call)
on the same 1024 texts of 8..256 words (benchmarks/throughput.py's corpus, as benchmarks/cpu.py uses), in
the same run; each warmed up first, the BM25 rows the median of --repeats passes. Also shown: Qdrant Edge's
Bm25 on the raw texts (its own tokenizer: what the encoder's fastembed-rule tokenizing costs) and
fastembed's `Qdrant/bm25` (when installed; run offline from tests/sparse/data's stopword list). Each row
gives texts per wall second and per CPU second of the process: on a shared machine the one-thread rows'
CPU-time ratio is the steady figure, the wall-time ratio moves with the load (printed).

Quality: two retrieval sets of natural text, built at run time from what is installed, so the figures
depend on the Python and the packages (the run prints their sizes):
  1. stdlib docstrings (benchmarks/cpu.py's `docstring_pairs`): the summary line is the query, the rest of
     the docstring (first 150 words) its one relevant passage; every passage is in the corpus.
  2. package READMEs: the long description in each installed distribution's METADATA, cut at its
     Markdown / reStructuredText headings into sections of >= 30 words (first 120 kept); every section is
     a passage; a heading of >= 2 content words, no version number, and used once in the whole set is a
     query whose one relevant passage is its own section (the heading is not in the passage text).
Scores: recall@10 (share of a query's relevant passages in its top 10, averaged) and nDCG@10 (binary gain,
1 / log2(rank + 1), over the ideal ordering), formulas in `recall_at_k` and `ndcg_at_k`.

Retrieval, per mode:
  - dense: cosine over all passages in numpy (exact), query and passage vectors from the default model;
  - BM25: a Qdrant Edge shard with one sparse vector with `Modifier.Idf` (Qdrant applies the IDF), exact;
  - hybrid (preview): the same Edge shard with both vectors, dense and sparse each prefetched `fetch_k` deep
    and fused by Qdrant's RRF (k = 2, the default of qdrant-client's own RRF, qdrant_client/hybrid/fusion.py;
    and k = 60, Cormack et al.'s);
  - `run_quality`: the same three modes through embedkit itself, `embedkit.ingest(..., sparse=BM25Encoder())`
    into a `QdrantSink` and `QdrantSink.search(..., mode=...)`; it reports "waits" until the sink has them.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import inspect
import math
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu import docstring_pairs
from throughput import corpus

import embedkit
from embedkit.onnx.model import NUM_THREADS_ENV
from embedkit.sparse import BM25Encoder, SparseVector

ROOT = Path(__file__).resolve().parents[1]
STOPWORDS = ROOT / "tests" / "sparse" / "data" / "english_stopwords.txt"
K = 10


# -- the retrieval sets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RetrievalSet:
    """A corpus of passages and queries, each query with the ids of its relevant passages."""

    name: str
    passages: list[Passage]
    queries: list[str]
    relevant: list[set[str]]

    def digest(self) -> str:
        """Short hash of the set's content, so two runs can tell whether they measured the same set."""
        h = hashlib.sha256()
        for passage in self.passages:
            h.update(passage.id.encode() + b"\0" + passage.text.encode() + b"\0")
        for query, ids in zip(self.queries, self.relevant, strict=True):
            h.update(query.encode() + b"\0" + ",".join(sorted(ids)).encode() + b"\0")
        return h.hexdigest()[:12]


def docstring_set(pairs: int) -> RetrievalSet:
    """Set 1: benchmarks/cpu.py's stdlib docstring pairs (summary line -> rest of the docstring)."""
    queries, texts = docstring_pairs(pairs)
    passages = [Passage(f"doc-{i}", text, {"set": "stdlib-docstrings"}) for i, text in enumerate(texts)]
    return RetrievalSet("stdlib-docstrings", passages, queries, [{p.id} for p in passages])


_ATX = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")  # "## Heading"
_RULE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")  # an RST / setext underline (or overline)
_VERSION = re.compile(r"\d+\.\d+|\d{4}-\d{2}")  # changelog headings: "1.2.0", "2014-02-24"


def _heading_text(raw: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)  # [label](link) -> label
    text = re.sub(r"<[^>]+>|[`*_]{1,3}", "", text)  # HTML tags, code and emphasis marks
    return " ".join(text.split()).strip(" :.")


def _prose(line: str) -> str:
    """A body line as text a reader would read: images, URLs and HTML tags out, links as their labels."""
    line = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", line)
    line = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line)
    line = re.sub(r"<[^>]+>|https?://\S+", " ", line)
    return line


def readme_sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) for each section of a Markdown or reStructuredText document. Bodies are prose: fenced
    code, RST directives (`.. image::`), interpreter sessions (`>>>`, `$ `), images and URLs are left out."""
    lines = text.splitlines()
    found: list[tuple[str, list[str]]] = [("", [])]
    in_code, i = False, 0
    while i < len(lines):
        line, following = lines[i], lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip().startswith("```"):
            in_code = not in_code
            i += 1
            continue
        if in_code or re.match(r"\s*(\.\. |>>>|\.\.\.|\$ )", line):
            i += 1
            continue
        atx = _ATX.match(line)
        underlined = (
            line.strip()
            and not _RULE.match(line)
            and _RULE.match(following)
            and len(following.strip()) >= len(line.strip())
        )
        if atx or underlined:
            found.append((_heading_text(atx.group(2) if atx else line), []))
            i += 1 if atx else 2
            continue
        if _RULE.match(line):  # an RST overline, or a horizontal rule
            i += 1
            continue
        found[-1][1].append(_prose(line))
        i += 1
    return [(heading, " ".join(" ".join(body).split())) for heading, body in found]


def readme_set(min_words: int = 30, max_words: int = 120) -> RetrievalSet:
    """Set 2: installed packages' READMEs (METADATA long descriptions) cut into sections; heading -> section."""
    by_name: dict[str, Any] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name and name != "embedkit" and name not in by_name:
            by_name[name] = dist
    sections: list[tuple[str, str, str]] = []  # (package, heading, text)
    seen: set[str] = set()
    for name in sorted(by_name):
        description = by_name[name].metadata.get_payload() or by_name[name].metadata.get("Description") or ""
        for heading, body in readme_sections(str(description)):
            words = body.split()
            text = " ".join(words[:max_words])
            if len(words) < min_words or text in seen:
                continue
            seen.add(text)
            sections.append((name, heading, text))
    stop = set(STOPWORDS.read_text().split())
    uses = Counter(heading.lower() for _, heading, _ in sections)
    passages, queries, relevant = [], [], []
    for i, (name, heading, text) in enumerate(sections):
        passage = Passage(f"readme-{i}", text, {"set": "package-readmes", "package": name, "heading": heading})
        passages.append(passage)
        content = [w for w in re.findall(r"[A-Za-z]+", heading) if len(w) >= 3 and w.lower() not in stop]
        if heading and uses[heading.lower()] == 1 and len(content) >= 2 and not _VERSION.search(heading):
            queries.append(heading)
            relevant.append({passage.id})
    return RetrievalSet("package-readmes", passages, queries, relevant)


# -- scores ------------------------------------------------------------------------------------------------


def recall_at_k(ranked: Sequence[Sequence[str]], relevant: Sequence[set[str]], k: int = K) -> float:
    """mean over queries of |top-k ∩ relevant| / |relevant| (queries without relevant passages are an error)."""
    scores = [len(set(ids[:k]) & rel) / len(rel) for ids, rel in zip(ranked, relevant, strict=True)]
    return float(np.mean(scores))


def ndcg_at_k(ranked: Sequence[Sequence[str]], relevant: Sequence[set[str]], k: int = K) -> float:
    """mean over queries of DCG / ideal DCG, binary gains: DCG = sum over ranks r <= k holding a relevant
    passage of 1 / log2(r + 1); the ideal puts min(|relevant|, k) relevant passages first (Järvelin and
    Kekäläinen 2002, with the log2(r + 1) discount of the TREC / BEIR evaluations)."""
    scores = []
    for ids, rel in zip(ranked, relevant, strict=True):
        dcg = sum(1 / math.log2(rank + 2) for rank, pid in enumerate(ids[:k]) if pid in rel)
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(len(rel), k)))
        scores.append(dcg / ideal)
    return float(np.mean(scores))


# -- retrieval done directly (the check of the sets) -------------------------------------------------------


def dense_rankings(vectors: tuple[np.ndarray, np.ndarray], s: RetrievalSet, k: int = K) -> list[list[str]]:
    """Exact cosine: the rows are unit vectors, so the dot product; top k per query, best first."""
    queries, passages = vectors
    scores = queries @ passages.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[s.passages[j].id for j in row] for row in top]


def _sparse(vector: SparseVector) -> qe.SparseVector:
    return qe.SparseVector(vector.indices, vector.values)


def edge_shard(path: Path, s: RetrievalSet, dense: np.ndarray | None, sparse: list[SparseVector]) -> qe.EdgeShard:
    """One Edge shard over the set: the sparse vector "bm25" with Qdrant's IDF modifier, and "dense" (cosine)
    when given. Point ids are passage positions."""
    dense_params = (
        {"dense": qe.EdgeVectorParams(size=dense.shape[1], distance=qe.Distance.Cosine)} if dense is not None else None
    )
    config = qe.EdgeConfig(
        vectors=dense_params, sparse_vectors={"bm25": qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}
    )
    shard = qe.EdgeShard.create(str(path), config)
    points = []
    for i, vector in enumerate(sparse):
        named: dict[str, Any] = {"bm25": _sparse(vector)}
        if dense is not None:
            named["dense"] = dense[i].tolist()
        points.append(qe.Point(i, named))
    for start in range(0, len(points), 512):
        shard.update(qe.UpdateOperation.upsert_points(points[start : start + 512]))
    return shard


def edge_rankings(shard: qe.EdgeShard, s: RetrievalSet, requests: list[qe.QueryRequest]) -> list[list[str]]:
    ranked = []
    for start in range(0, len(requests), 256):
        batch = shard.query_batch(qe.QueryBatchRequest(requests[start : start + 256]))
        ranked += [[s.passages[int(point.id)].id for point in points] for points in batch]
    return ranked


def bm25_requests(queries: list[SparseVector], k: int = K) -> list[qe.QueryRequest]:
    exact = qe.SearchParams(exact=True)
    return [qe.QueryRequest(limit=k, query=qe.Query.Nearest(_sparse(q), using="bm25"), params=exact) for q in queries]


def hybrid_requests(
    dense: np.ndarray, sparse: list[SparseVector], rrf_k: int, fetch_k: int, k: int = K
) -> list[qe.QueryRequest]:
    exact = qe.SearchParams(exact=True)
    return [
        qe.QueryRequest(
            limit=k,
            prefetches=[
                qe.Prefetch(limit=fetch_k, query=qe.Query.Nearest(d.tolist(), using="dense"), params=exact),
                qe.Prefetch(limit=fetch_k, query=qe.Query.Nearest(_sparse(q), using="bm25"), params=exact),
            ],
            query=qe.Fusion.Rrf(k=rrf_k),
        )
        for d, q in zip(dense, sparse, strict=True)
    ]


# -- retrieval through embedkit (the sink's hybrid search) -------------------------------------------------


def sink_has_hybrid() -> bool:
    from embedkit.sinks import QdrantSink

    search = inspect.signature(QdrantSink.search).parameters
    return {"mode", "sparse_vector"} <= set(search) and "sparse" in inspect.signature(embedkit.ingest).parameters


def run_quality(
    s: RetrievalSet,
    embedder: Any,
    encoder: BM25Encoder,
    workdir: Path,
    modes: Sequence[str] = ("dense", "sparse", "hybrid"),
    k: int = K,
    fetch_k: int | None = None,
    fusion: str = "rrf",
) -> dict[str, tuple[float, float]] | None:
    """recall@k and nDCG@k per mode through embedkit: the set ingested with `sparse=encoder` into a Qdrant
    Edge collection, each query searched with `QdrantSink.search(vector, k, sparse_vector=..., mode=...)`.
    Passages may be chunked: hits count by `doc_id`, the first hit of a passage its rank. None when the
    installed embedkit's sink has no hybrid search yet."""
    if not sink_has_hybrid():
        return None
    from embedkit.sinks import QdrantSink

    sink = QdrantSink(f"hybrid-{s.name}", path=workdir / f"sink-{s.name}")
    try:
        docs = [{"id": p.id, "text": p.text, "metadata": p.metadata} for p in s.passages]
        embedkit.ingest(docs, embedder, sink, sparse=encoder, progress=False)
        dense = embedder.embed(s.queries, task="query")
        sparse = [encoder.embed_query(q) for q in s.queries]
        results = {}
        for mode in modes:
            ranked = []
            for vector, sparse_vector in zip(dense, sparse, strict=True):
                hits = sink.search(
                    vector, 3 * k, sparse_vector=sparse_vector, mode=mode, fetch_k=fetch_k, fusion=fusion
                )
                ids = list(dict.fromkeys(hit.payload["doc_id"] for hit in hits))
                ranked.append(ids[:k])
            results[mode] = (recall_at_k(ranked, s.relevant, k), ndcg_at_k(ranked, s.relevant, k))
        return results
    finally:
        sink.close()


# -- speed -------------------------------------------------------------------------------------------------


def texts_per_second(embed: Callable[[list[str]], object], texts: list[str], repeats: int) -> tuple[float, float]:
    """(texts per wall second, texts per CPU second of this process): warm up on 64 texts, then the median of
    `repeats` timed passes over all of them. CPU time is what a one-thread row costs however busy the
    machine is; wall time is what a user waits."""
    embed(texts[:64])
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        embed(texts)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return len(texts) / statistics.median(wall), len(texts) / statistics.median(cpu)


def fastembed_bm25(workdir: Path) -> Any:
    """fastembed's Qdrant/bm25 from a local folder (its Bm25 reads only `english.txt` there): None if absent."""
    try:
        from fastembed import SparseTextEmbedding
    except ImportError:
        return None
    folder = workdir / "fastembed-qdrant-bm25"
    folder.mkdir()
    shutil.copy(STOPWORDS, folder / "english.txt")
    return SparseTextEmbedding("Qdrant/bm25", specific_model_path=str(folder), local_files_only=True)


def load_dense(threads: int | None = None) -> Any:
    """`embedkit.load()` on the CPU (its default backend there: ONNX Runtime, all CPUs); `threads` caps them."""
    previous = os.environ.get(NUM_THREADS_ENV)
    if threads is not None:
        os.environ[NUM_THREADS_ENV] = str(threads)
    try:
        return embedkit.load(device="cpu")
    finally:
        if threads is not None and previous is None:
            del os.environ[NUM_THREADS_ENV]
        elif threads is not None and previous is not None:
            os.environ[NUM_THREADS_ENV] = previous


def describe(embedder: Any) -> str:
    threads = getattr(embedder.model, "threads", None) or torch.get_num_threads()
    return f"{getattr(embedder, 'backend', '?')}, {threads} thread{'s' if threads > 1 else ''}"


def speed(embedder: Any, encoder: BM25Encoder, texts: list[str], workdir: Path, repeats: int) -> None:
    one_core = load_dense(threads=1)
    engine = qe.Bm25(qe.Bm25Config())
    rows = [
        (f"dense: embedkit.load() ({describe(embedder)})", texts_per_second(embedder.embed, texts, 1)),
        (f"dense: embedkit.load() ({describe(one_core)})", texts_per_second(one_core.embed, texts, 1)),
        ("BM25Encoder.embed_documents (1 thread)", texts_per_second(encoder.embed_documents, texts, repeats)),
        (
            "BM25Encoder.embed_query (1 thread)",
            texts_per_second(lambda t: [encoder.embed_query(x) for x in t], texts, repeats),
        ),
        (
            "qdrant-edge Bm25 alone, its own tokenizer (1 thread)",
            texts_per_second(lambda t: [engine.embed_document(x) for x in t], texts, repeats),
        ),
    ]
    fast = fastembed_bm25(workdir)
    if fast is not None:
        rows.append(
            (
                f"fastembed {metadata.version('fastembed')} Qdrant/bm25 (1 thread)",
                texts_per_second(lambda t: list(fast.embed(t)), texts, repeats),
            )
        )
    (dense, _), (dense_one, dense_one_cpu) = rows[0][1], rows[1][1]
    words = sum(len(t.split()) for t in texts)
    print(f"\n{len(texts)} texts of 8..256 words ({words} words); load average {os.getloadavg()[0]:.1f}\n")
    print(f"| {'what':52} | texts/s | texts/CPU-s | x dense | x dense 1 thread | same, CPU time |")
    print(f"|{'-' * 54}|--------:|------------:|--------:|----------------:|---------------:|")
    for name, (rate, cpu_rate) in rows:
        print(
            f"| {name:52} | {rate:7.0f} | {cpu_rate:11.0f} | {rate / dense:6.1f}x | {rate / dense_one:14.1f}x | "
            f"{cpu_rate / dense_one_cpu:13.1f}x |"
        )


# -- main --------------------------------------------------------------------------------------------------


def cpu_description() -> str:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8") if f in flags]
    return f"{model}; flags: {' '.join(wanted) or 'n/a'}"


def quality(s: RetrievalSet, embedder: Any, encoder: BM25Encoder, workdir: Path, fetch_k: int) -> None:
    started = time.perf_counter()
    passages = [p.text for p in s.passages]
    dense_p, dense_q = embedder.embed(passages, task="document"), embedder.embed(s.queries, task="query")
    sparse_p, sparse_q = encoder.embed_documents(passages), [encoder.embed_query(q) for q in s.queries]
    empty = sum(not v.indices for v in sparse_p), sum(not v.indices for v in sparse_q)
    shard = edge_shard(workdir / f"edge-{s.name}", s, dense_p, sparse_p)
    try:
        ranked = {
            "dense (numpy cosine)": dense_rankings((dense_q, dense_p), s),
            "BM25 (Edge, sparse + IDF)": edge_rankings(shard, s, bm25_requests(sparse_q)),
            f"hybrid preview: Edge RRF k=2, fetch {fetch_k}": edge_rankings(
                shard, s, hybrid_requests(dense_q, sparse_q, 2, fetch_k)
            ),
            f"hybrid preview: Edge RRF k=60, fetch {fetch_k}": edge_rankings(
                shard, s, hybrid_requests(dense_q, sparse_q, 60, fetch_k)
            ),
        }
    finally:
        shard.close()
    chance = float(np.mean([min(len(rel), K) / len(s.passages) for rel in s.relevant]))
    print(
        f"\n{s.name}: {len(s.passages)} passages, {len(s.queries)} queries (set {s.digest()}); "
        f"empty BM25 vectors: {empty[0]} passages, {empty[1]} queries; recall@10 by chance {chance:.4f}"
    )
    print(f"| {'mode':42} | recall@10 | nDCG@10 |")
    print(f"|{'-' * 44}|----------:|--------:|")
    for name, ids in ranked.items():
        print(f"| {name:42} | {recall_at_k(ids, s.relevant):9.3f} | {ndcg_at_k(ids, s.relevant):7.3f} |")
    through_sink = run_quality(s, embedder, encoder, workdir)
    if through_sink is None:
        print(
            "| embedkit QdrantSink.search(mode=...)       |     waits |   waits |  (the sink has no hybrid search yet)"
        )
    else:
        for mode, (recall, ndcg) in through_sink.items():
            print(f"| {'embedkit sink, mode=' + mode:42} | {recall:9.3f} | {ndcg:7.3f} |")
    print(f"({time.perf_counter() - started:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1024, help="texts for the speed comparison")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes of the BM25 rows (median)")
    parser.add_argument("--pairs", type=int, default=1000, help="docstring query/passage pairs (set 1)")
    parser.add_argument("--fetch-k", type=int, default=40, help="prefetch depth of each branch in hybrid")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    embedder = load_dense()
    encoder = BM25Encoder()
    print(
        f"# {datetime.date.today()} {cpu_description()}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, qdrant-edge-py {metadata.version('qdrant-edge-py')}; "
        f"dense: all-MiniLM-L6-v2 ({describe(embedder)}), dimension {embedder.dimension}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="embedkit-hybrid-bench-"))
    try:
        if not args.skip_speed:
            speed(embedder, encoder, corpus(args.texts, 8, 256, args.seed), workdir, args.repeats)
        if not args.skip_quality:
            for s in (docstring_set(args.pairs), readme_set()):
                quality(s, embedder, encoder, workdir, args.fetch_k)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
