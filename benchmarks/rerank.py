"""Cross-encoder reranking on CPU: embedkit's reranker vs sentence-transformers' CrossEncoder, same weights.

    python benchmarks/rerank.py                       # MiniLM-L6 cross-encoder, 4 queries x 100 documents
    python benchmarks/rerank.py --queries 8 --repeat 5
    python benchmarks/rerank.py --model PATH          # a real cross-encoder folder instead

The checkpoint is built here, without a hub: all-MiniLM-L6-v2's encoder weights (the packaged model: 6
layers, 384 wide, the size of cross-encoder/ms-marco-MiniLM-L6-v2) under a seeded random pooler and
classifier, saved by transformers' BertForSequenceClassification and sentence-transformers'
CrossEncoder.save. The scores are meaningless for relevance; the compute is the published model's.

Texts: natural English from benchmarks/cpu.py's standard-library docstring set. Each query is a docstring
summary cut to 12 words (~16 tokens with the pair's special tokens); each of its `--docs` documents joins
passages until a length drawn uniformly from 80-230 words (~100-300 tokens). Every row reranks the same
queries, one `rerank`/`rank` call per query (the reranking stage of a RAG request); before any figure is
printed, each row's scores are compared with sentence-transformers' (max abs diff). Rows are warmed up,
then timed best of `--repeat`, interleaved. Threads: torch's (and ONNX Runtime's) count, one value for all.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu import docstring_pairs  # the stdlib docstring set
from throughput import minilm_dir


def write_minilm_cross_encoder(root: Path, seed: int = 0) -> Path:
    """all-MiniLM-L6-v2's encoder + a seeded random pooler and classifier, as a CrossEncoder folder."""
    from safetensors.torch import load_file
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    source = minilm_dir(Path())
    config = BertConfig.from_pretrained(str(source), num_labels=1)
    config.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    encoder = load_file(str(source / "model.safetensors"))
    encoder = {name.removeprefix("bert."): tensor for name, tensor in encoder.items()}
    missing, _ = model.bert.load_state_dict(encoder, strict=False)
    if any(not name.startswith("pooler.") for name in missing):
        raise RuntimeError(f"all-MiniLM-L6-v2's encoder did not load: missing {missing}")
    staging = root / "hf"
    model.save_pretrained(staging, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(staging)
    target = root / "cross-encoder"
    CrossEncoder(str(staging), device="cpu").save(str(target))
    return target


def workload(queries: int, docs: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """`queries` (query, documents) requests of natural English (module docstring)."""
    summaries, passages = docstring_pairs(4000)
    rng = random.Random(seed)
    words = [passage.split() for passage in passages]
    requests = []
    for q in range(queries):
        query = " ".join(summaries[q * 7 % len(summaries)].split()[:12])
        documents = []
        for _ in range(docs):
            target, text = rng.randint(80, 230), []
            while len(text) < target:
                text.extend(words[rng.randrange(len(words))])
            documents.append(" ".join(text[:target]))
        requests.append((query, documents))
    return requests


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "n/a"
    wanted = ("avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8")
    return ", ".join(flag for flag in wanted if flag in flags) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a cross-encoder folder (default: built from all-MiniLM-L6-v2)")
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--docs", type=int, default=100, help="documents per query")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--backends", default="torch,onnx", help="embedkit rows: torch, onnx, onnx-int8")
    parser.add_argument("--st-batch-size", type=int, default=32, help="CrossEncoder.rank's batch_size (its default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from sentence_transformers import CrossEncoder

    import embedkit
    from embedkit.rerank import Reranker

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model or write_minilm_cross_encoder(Path(scratch))
        requests = workload(args.queries, args.docs)
        pairs = sum(len(documents) for _, documents in requests)
        reference = CrossEncoder(str(model_dir), device="cpu")
        reference.eval()

        def st_scores() -> list[np.ndarray]:
            out = []
            for query, documents in requests:
                ranked = reference.rank(query, documents, batch_size=args.st_batch_size)
                scores = np.empty(len(documents))
                for entry in ranked:
                    scores[entry["corpus_id"]] = entry["score"]
                out.append(scores)
            return out

        rows: dict[str, Callable[[], list[np.ndarray]]] = {"sentence-transformers CrossEncoder": st_scores}
        onnx_cache = Path(scratch) / "onnx"
        for backend in args.backends.split(","):
            quantize = "int8" if backend == "onnx-int8" else None
            reranker = embedkit.load_reranker(
                model_dir,
                device="cpu",
                backend="onnx" if backend.startswith("onnx") else "torch",
                quantize=quantize,
                onnx_cache_dir=onnx_cache,
            )

            def ours(reranker: Reranker = reranker) -> list[np.ndarray]:
                out = []
                for query, documents in requests:
                    scores = np.empty(len(documents))
                    for result in reranker.rerank(query, documents):
                        scores[result.index] = result.score
                    out.append(scores)
                return out

            rows[f"embedkit {backend}"] = ours

        expected = np.concatenate(st_scores())
        diffs = {}
        for name, run in rows.items():
            got = np.concatenate(run())  # also the warm-up
            diffs[name] = float(np.abs(got - expected).max())
        best = dict.fromkeys(rows, float("inf"))
        for _ in range(args.repeat):
            for name, run in rows.items():
                start = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - start)

        load = os.getloadavg()
        print(
            f"# {datetime.date.today()} {platform.processor() or platform.machine()} ({cpu_flags()}), "
            f"{args.threads} threads, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
            f"{args.queries} queries x {args.docs} docs = {pairs} pairs, fp32, best of {args.repeat}"
        )
        baseline = pairs / best["sentence-transformers CrossEncoder"]
        print("| row | pairs/s | vs sentence-transformers | max abs diff vs ST |")
        print("|---|---:|---:|---:|")
        for name in rows:
            rate = pairs / best[name]
            print(f"| {name} | {rate:.1f} | {rate / baseline:.2f}x | {diffs[name]:.2e} |")


if __name__ == "__main__":
    main()
