"""Which ONNX graph runs fastest: torch's two exporters x ONNX Runtime's graph optimisation levels, one run.

    python benchmarks/onnx_export.py                              # all-MiniLM-L6-v2, 1024 mixed texts
    python benchmarks/onnx_export.py --model mpnet-base-random --texts 256

The graph is the one embedkit exports (onnx/export.py `SentenceGraph`: token states and the pooled
vector), written once by each exporter and checked against torch on the trace's batch and a probe batch;
each is then run with ONNX Runtime at BASIC, EXTENDED and ALL graph optimisation, over the same texts, in
--repeat interleaved rounds (best of rounds per row),
batched as embedkit batches them (longest first under the ONNX CPU token budget), on the same threads.
Rows: texts/s of the model calls alone (tokenising is the same for every row and left out), the ratio to
the dynamo exporter's graph at ALL (embedkit's graph before issue 28), and the min cosine of each row's
pooled vectors against torch's.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu import MODELS
from throughput import corpus

import embedkit
from embedkit.local.batching import cpu_batch_tokens, pack
from embedkit.onnx.export import EXPORTERS, OUTPUT_NAMES, SentenceGraph, check_graph, example_inputs, export_module
from embedkit.onnx.export import probe_inputs as probe
from embedkit.onnx.model import import_onnxruntime


def cpu_flags() -> str:
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    present = set(flags.split(":", 1)[1].split())
    return " ".join(flag for flag in wanted if flag in present) or "none of AVX2 / AVX-512 / VNNI / AMX"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="minilm")
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds; each row keeps its best")
    args = parser.parse_args()

    ort = import_onnxruntime()
    threads = torch.get_num_threads()
    workdir = Path(tempfile.mkdtemp(prefix="embedkit-export-bench-"))
    writer, model_name, _ = MODELS[args.model]
    embedder = embedkit.load(writer(workdir), device="cpu", backend="torch")
    texts = corpus(args.texts, 8, args.max_tokens, 0)
    ids = embedder.encode(texts, max_length=embedder.max_input_tokens)
    budget = cpu_batch_tokens("onnx")
    batches = [b.padded() for b in pack(ids, batch_tokens=budget, max_batch_size=256, pad_id=0)]
    graph = SentenceGraph(embedder.model, embedder.describe()["pooling"], None).eval()
    with torch.no_grad():
        reference = np.concatenate(
            [
                graph(
                    v.input_ids,
                    v.attention_mask.long(),
                    v.position_ids,
                    torch.zeros(v.input_ids.shape[0], dtype=torch.long),
                )[1].numpy()
                for v in batches
            ]
        )
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    print(
        f"# {time.strftime('%Y-%m-%d')} {platform.machine()}, CPU flags: {cpu_flags()}; {threads} threads, torch "
        f"{torch.__version__}, onnxruntime {ort.__version__}; {model_name}, {len(texts)} texts of 8..{args.max_tokens} "
        f"words, {budget} padded tokens per pass"
    )

    def session(path: Path, level) -> object:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = level
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(sess) -> np.ndarray:
        declared = {arg.name for arg in sess.get_inputs()}
        out = []
        for view in batches:
            feed = {
                "input_ids": view.input_ids.numpy(),
                "attention_mask": view.attention_mask.numpy().astype(np.int64),
                "position_ids": view.position_ids.numpy(),
                "prompt_lengths": np.zeros(view.input_ids.shape[0], dtype=np.int64),
            }
            out.append(sess.run([OUTPUT_NAMES[1]], {k: v for k, v in feed.items() if k in declared})[0])
        return np.concatenate(out)

    levels = {
        "BASIC": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "EXTENDED": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    rows: list[tuple[str, str, float, float]] = []
    sessions: dict[tuple[str, str], object] = {}
    vectors: dict[tuple[str, str], np.ndarray] = {}
    for exporter in EXPORTERS:
        path = workdir / exporter / "model.onnx"
        path.parent.mkdir()
        started = time.perf_counter()
        try:
            export_module(graph, example_inputs(), {OUTPUT_NAMES[0]: (0, 1), OUTPUT_NAMES[1]: (0,)}, path, exporter)
            checked = session(path, levels["ALL"])
            for inputs in (example_inputs(), probe()):
                check_graph(checked, graph, inputs)
        except Exception as exc:
            print(f"{exporter}: no usable graph ({type(exc).__name__}: {exc})")
            continue
        print(f"{exporter}: exported and checked in {time.perf_counter() - started:.1f} s")
        for level_name, level in levels.items():
            sessions[(exporter, level_name)] = session(path, level)
    # rounds interleave the rows, so that a shared machine's slow spell costs every row alike; best of rounds
    best = dict.fromkeys(sessions, 0.0)
    for _ in range(args.repeat):
        for name, sess in sessions.items():
            started = time.perf_counter()
            vectors[name] = run(sess)
            best[name] = max(best[name], len(texts) / (time.perf_counter() - started))
    for (exporter, level_name), speed in best.items():
        unit = vectors[(exporter, level_name)] / np.linalg.norm(vectors[(exporter, level_name)], axis=1, keepdims=True)
        rows.append((exporter, level_name, speed, float((unit * reference).sum(axis=1).min())))
    baseline = next((r[2] for r in rows if r[0] == "dynamo" and r[1] == "ALL"), rows[0][2])
    print(
        f"\n| exporter    | ORT level | texts/s | x dynamo+ALL | min cosine vs torch |\n|{'-' * 13}|{'-' * 11}|"
        f"--------:|-------------:|--------------------:|"
    )
    for exporter, level_name, speed, cosine in rows:
        print(f"| {exporter:11} | {level_name:9} | {speed:7.1f} | {speed / baseline:11.2f}x | {cosine:19.7f} |")


if __name__ == "__main__":
    main()
