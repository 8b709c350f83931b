"""The CPU paths side by side, in one run, on the same texts, weights and threads.

    python benchmarks/cpu.py                 # all-MiniLM-L6-v2, 1024 mixed-length texts
    python benchmarks/cpu.py --texts 2048 --max-tokens 512
    python benchmarks/cpu.py --model mpnet-base-random --texts 256   # all-mpnet-base-v2's shape, random weights

Rows: sentence-transformers fp32 (the baseline), fastembed on embedkit's exported ONNX graph (when
fastembed is installed; its own ONNX Runtime loop, batches in input order), embedkit torch,
embedkit onnx fp32 and embedkit onnx int8. Each is warmed up, then timed once over the corpus;
vectors are compared with the baseline's (min cosine) before any figure is printed.

Throughput corpus: log-uniform lengths (--min-tokens .. --max-tokens words) from examples/docs, as
in throughput.py. Quality corpus for int8: natural English, the docstrings of Python's standard
library — each summary line is a query, the rest of its docstring the passage it should find;
recall@10 = share of queries whose own passage ranks in the top 10 of all passages. With random weights
(--model mpnet-base-random: all-mpnet-base-v2's size and layout, written by throughput.py's writer; weights
do not change speed) there is no quality to measure, so that part is skipped.

Also printed: the machine's fp32 matmul rate (torch, a 2048^2 GEMM on the same threads) and each
row's achieved model FLOP rate, which says how much room a faster fp32 engine could have at all.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import Run, corpus, minilm_dir, model_flops, mpnet_base_dir, timed

import embedkit

# --model name -> (writer(workdir) -> model folder, what it is, real weights?)
MODELS = {
    "minilm": (minilm_dir, "all-MiniLM-L6-v2", True),
    "mpnet-base-random": (mpnet_base_dir, "MPNet-base (all-mpnet-base-v2's shape, random weights)", False),
}

STDLIB_MODULES = (
    "argparse asyncio.tasks base64 bisect calendar collections concurrent.futures contextlib copy csv dataclasses "
    "datetime decimal difflib email.message enum fnmatch fractions functools glob gzip hashlib heapq html http.client "
    "inspect itertools json locale logging logging.handlers math mimetypes os pathlib pickle platform pprint queue "
    "random re secrets shlex shutil socket sqlite3 statistics string subprocess tarfile tempfile textwrap threading "
    "time tokenize traceback typing unittest.case urllib.parse uuid warnings weakref xml.dom.minidom zipfile"
).split()


def docstring_pairs(limit: int) -> tuple[list[str], list[str]]:
    """(queries, passages): summary line -> the rest of the docstring, natural English, deduplicated."""
    queries, passages, seen = [], [], set()
    for module_name in STDLIB_MODULES:
        module = importlib.import_module(module_name)
        objects = [module]
        for _, member in sorted(inspect.getmembers(module), key=lambda item: item[0]):
            if inspect.isclass(member) or inspect.isfunction(member):
                objects.append(member)
                if inspect.isclass(member):
                    objects.extend(m for _, m in sorted(vars(member).items()) if inspect.isfunction(m))
        for obj in objects:
            doc = inspect.getdoc(obj) or ""
            summary, _, rest = doc.partition("\n")
            rest = " ".join(rest.split())
            if len(summary.split()) < 4 or len(rest.split()) < 12 or rest in seen or summary in seen:
                continue
            seen.update((rest, summary))
            queries.append(summary.strip())
            passages.append(" ".join(rest.split()[:150]))
            if len(queries) == limit:
                return queries, passages
    return queries, passages


def recall_at_10(queries: np.ndarray, passages: np.ndarray) -> float:
    """Share of queries i whose passage i is among the 10 nearest passages."""
    top = np.argsort(-(queries @ passages.T), axis=1)[:, :10]
    return float((top == np.arange(len(queries))[:, None]).any(axis=1).mean())


def cpu_gemm_gflops() -> float:
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start, repeats = time.perf_counter(), 5
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def fastembed_dir(model_dir: Path, graph: Path, workdir: Path, max_length: int) -> Path:
    """embedkit's exported graph with the tokenizer files, laid out as fastembed reads a local model."""
    target = workdir / "fastembed-model"
    target.mkdir()
    for name in ("tokenizer.json", "config.json", "special_tokens_map.json", "vocab.txt"):
        if (model_dir / name).exists():
            shutil.copy(model_dir / name, target / name)
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = max_length  # the same truncation as the other rows
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    for path in graph.parent.glob("model.onnx*"):
        (target / path.name).symlink_to(path)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="minilm")
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--min-tokens", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=1000, help="docstring query/passage pairs for recall@10")
    parser.add_argument("--st-batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    threads = torch.get_num_threads()
    os.environ.setdefault("EMBEDKIT_NUM_THREADS", str(threads))  # ONNX Runtime on the same threads as torch
    texts = corpus(args.texts, args.min_tokens, args.max_tokens, args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="embedkit-cpu-bench-"))
    writer, model_name, real_weights = MODELS[args.model]
    model_dir = writer(workdir)
    cache = workdir / "onnx-cache"
    print(
        f"# {datetime.date.today()} {platform.processor() or platform.machine()}, {threads} threads, "
        f"torch {torch.__version__}; {model_name} over {len(texts)} texts of {args.min_tokens}..{args.max_tokens} "
        "words"
    )

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    eager = embedkit.load(model_dir, device="cpu", backend="torch")
    started = time.perf_counter()
    fp32 = embedkit.load(model_dir, device="cpu", backend="onnx", onnx_cache_dir=cache)
    export_fp32 = time.perf_counter() - started
    started = time.perf_counter()
    int8 = embedkit.load(model_dir, device="cpu", quantize="int8", onnx_cache_dir=cache)
    export_int8 = time.perf_counter() - started
    print(
        f"export + cache: fp32 {export_fp32:.1f} s, int8 {export_int8:.1f} s (exporter: {fp32.model.exporter}; "
        f"int8 kept fp32: {int8.model.kept_fp32}; CPU batch tokens: torch {eager.batch_tokens}, "
        f"onnx {fp32.batch_tokens})"
    )

    def runner(embed):
        return lambda warmup: embed(texts[:64] if warmup else texts)

    runs: list[Run] = [
        timed(
            "sentence-transformers fp32",
            "cpu",
            runner(lambda t: st.encode(t, batch_size=args.st_batch_size, normalize_embeddings=True)),
        )
    ]
    try:
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType

        graph = next(cache.glob(f"{eager.family}-base-none-*")) / "model.onnx"
        local = fastembed_dir(model_dir, graph, workdir, eager.max_input_tokens)
        fast_name = f"embedkit/{args.model}-onnx"
        TextEmbedding.add_custom_model(
            fast_name,
            pooling=PoolingType.MEAN,  # both models pool the mean
            normalization=True,
            sources=ModelSource(hf=fast_name),
            dim=eager.dimension,
            model_file="model.onnx",
        )
        fast = TextEmbedding(fast_name, specific_model_path=str(local), threads=threads)
        runs.append(timed("fastembed (same ONNX graph)", "cpu", runner(lambda t: np.stack(list(fast.embed(t))))))
    except ImportError:
        print("fastembed is not installed: its row is left out (pip install fastembed)")
    except ValueError as exc:  # ONNX Runtime refusing fastembed's feed: this fastembed omits position_ids
        print(f"fastembed cannot run embedkit's graph, its row is left out ({exc})")
    runs += [
        timed("embedkit torch", "cpu", runner(eager.embed)),
        timed("embedkit onnx fp32", "cpu", runner(fp32.embed)),
        timed("embedkit onnx int8", "cpu", runner(int8.embed)),
    ]

    lengths = [min(len(e.ids), eager.max_input_tokens) for e in eager.tokenize(texts)]
    flops = model_flops(eager, lengths)
    gemm = cpu_gemm_gflops()
    base = runs[0]
    print(f"{sum(lengths)} tokens; fp32 GEMM on this machine: {gemm:.0f} GFLOP/s\n")
    print(f"| {'what':28} | texts/s | tokens/s | x ST fp32 | model GFLOP/s | min cosine vs ST |")
    print(f"|{'-' * 30}|--------:|---------:|----------:|--------------:|-----------------:|")
    for run in runs:
        cosine = float((run.vectors * base.vectors).sum(axis=1).min())
        print(
            f"| {run.name:28} | {len(texts) / run.seconds:7.1f} | {sum(lengths) / run.seconds:8.0f} | "
            f"{base.seconds / run.seconds:8.2f}x | {flops / run.seconds / 1e9:13.0f} | {cosine:16.5f} |"
        )

    if not real_weights:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    queries, passages = docstring_pairs(args.pairs)
    p_fp32, p_int8 = fp32.embed(passages), int8.embed(passages)
    recall_fp32 = recall_at_10(fp32.embed(queries), p_fp32)
    recall_int8 = recall_at_10(int8.embed(queries), p_int8)
    recall_st = recall_at_10(*(st.encode(t, normalize_embeddings=True) for t in (queries, passages)))
    cosines = (p_fp32 * p_int8).sum(axis=1)
    print(
        f"\nnatural text ({len(queries)} stdlib docstrings: summary line -> rest): recall@10 "
        f"ST {recall_st:.3f}, onnx fp32 {recall_fp32:.3f}, onnx int8 {recall_int8:.3f} "
        f"({100 * (recall_int8 - recall_fp32):+.1f} points); int8 vs fp32 cosine min {cosines.min():.4f}, "
        f"mean {cosines.mean():.4f}"
    )
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
