"""The CPU token budget per engine: padded tokens per forward pass vs texts/s, one run, interleaved.

    python benchmarks/cpu_budget.py                       # all-MiniLM-L6-v2, 1024 texts of 8..256 words
    python benchmarks/cpu_budget.py --budgets 512,1024,2048,4096,16384 --rounds 3

Each engine (torch, ONNX Runtime fp32, ONNX Runtime int8) is loaded once; its `batch_tokens` is set to each
budget in turn and `embed` timed over the whole corpus (tokenising included, as users call it). Rounds
interleave every (engine, budget) row so a shared machine's slow spell costs them alike; each row keeps
its best round. The budget that wins per engine is what `embedkit.local.batching.CPU_BATCH_TOKENS` holds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu import MODELS
from onnx_export import cpu_flags
from throughput import corpus

import embedkit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="minilm")
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--budgets", default="512,1024,2048,4096")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    threads = torch.get_num_threads()
    os.environ.setdefault("EMBEDKIT_NUM_THREADS", str(threads))
    workdir = Path(tempfile.mkdtemp(prefix="embedkit-budget-bench-"))
    writer, model_name, _ = MODELS[args.model]
    model_dir = writer(workdir)
    texts = corpus(args.texts, 8, args.max_tokens, 0)
    budgets = [int(b) for b in args.budgets.split(",")]
    engines = {
        "torch": embedkit.load(model_dir, device="cpu", backend="torch"),
        "onnx fp32": embedkit.load(model_dir, device="cpu", backend="onnx", onnx_cache_dir=workdir / "cache"),
        "onnx int8": embedkit.load(model_dir, device="cpu", quantize="int8", onnx_cache_dir=workdir / "cache"),
    }
    defaults = {name: engine.batch_tokens for name, engine in engines.items()}
    print(
        f"# {time.strftime('%Y-%m-%d')} CPU flags: {cpu_flags()}; {threads} threads; {model_name}, {len(texts)} texts "
        f"of 8..{args.max_tokens} words; best of {args.rounds} interleaved rounds"
    )
    for engine in engines.values():
        engine.embed(texts[:64])  # warm-up
    best = {(name, budget): 0.0 for name in engines for budget in budgets}
    for _ in range(args.rounds):
        for name, budget in best:
            engine = engines[name]
            engine.batch_tokens = budget
            started = time.perf_counter()
            engine.embed(texts)
            best[(name, budget)] = max(best[(name, budget)], len(texts) / (time.perf_counter() - started))
    print(f"\n| engine    | {' | '.join(f'{b:>6}' for b in budgets)} | embedkit's default |")
    print(f"|-----------|{'|'.join('-------:' for _ in budgets)}|-------------------:|")
    for name in engines:
        top = max(budgets, key=lambda b: best[(name, b)])
        cells = " | ".join(f"{best[(name, b)]:5.1f}{'*' if b == top else ' '}" for b in budgets)
        print(f"| {name:9} | {cells} | {defaults[name]:>18} |")
    print("\ntexts/s; * = the engine's fastest budget")


if __name__ == "__main__":
    main()
