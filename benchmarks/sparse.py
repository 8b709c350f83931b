"""SPLADE on CPU: embedkit's SpladeEncoder vs sentence-transformers' SparseEncoder, same weights, texts, threads.

    python benchmarks/sparse.py                       # DistilBERT-base-sized random SPLADE, 512 passages
    python benchmarks/sparse.py --size bert-base --texts 256
    python benchmarks/sparse.py --model PATH          # a real SparseEncoder folder instead

The checkpoint is RANDOM (no hub here): it measures speed only. Its shape is the published one
(DistilBERT-base: 6 layers, 768 wide, 30522-token vocabulary, as opensearch's doc-v3 and naver's
efficient SPLADE models; or BERT-base: 12 layers, as naver/splade-v3), saved by transformers'
DistilBertForMaskedLM / BertForMaskedLM and sentence-transformers' `SparseEncoder.save`. Its MLM bias
is shifted so that about 150 vocabulary entries per passage stay active, as trained SPLADE models give
(a random head activates most of the vocabulary, which would time the conversion of 29k-entry vectors
instead of the model).

Texts: natural English, the passages of benchmarks/cpu.py's standard-library docstring set (up to 150
words each). Both sides encode the same list as documents; before any figure is printed every vector is
compared with sentence-transformers' (max abs diff, nonzero entries). Each row is warmed up on a few texts,
then timed over the list, best of `--repeat` runs interleaved across the rows. Threads: torch's (and ONNX
Runtime's) count, one value for all.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu import docstring_pairs  # the stdlib docstring set
from throughput import minilm_dir

SIZES = {
    "distilbert-base": {"dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def write_random_splade(root: Path, size: str, sample: list[str]) -> Path:
    """A random SPLADE model of `size` in sentence-transformers' layout, its bias set for ~150 active dims."""
    import shutil

    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling
    from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

    torch.manual_seed(0)
    if size == "distilbert-base":
        model = DistilBertForMaskedLM(DistilBertConfig(vocab_size=30522, **SIZES[size]))
        bias = model.vocab_projector.bias
    else:
        model = BertForMaskedLM(BertConfig(vocab_size=30522, **SIZES[size]))
        bias = model.cls.predictions.bias
    hf = root / "hf"
    tokenizer_dir = minilm_dir(Path())  # all-MiniLM-L6-v2 ships bert-base-uncased's vocabulary
    model.eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    with torch.no_grad():
        batch = tokenizer(sample, padding=True, truncation=True, max_length=256, return_tensors="pt")
        batch.pop("token_type_ids", None)
        logits = model(**batch).logits.masked_fill(~batch["attention_mask"].bool()[..., None], -1e9)
        peak = logits.amax(dim=1)  # [B, V]: the max-pooled logit of each entry
        threshold = peak.quantile(1 - 150 / peak.shape[1], dim=1).mean()
        bias -= threshold  # entries stay active where the max logit clears the typical 150th largest
    model.save_pretrained(hf, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, hf / name)
    target = root / "splade"
    transformer = Transformer(str(hf), transformer_task="fill-mask", max_seq_length=256)
    SparseEncoder(modules=[transformer, SpladePooling("max")], device="cpu").save(str(target))
    return target


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    return ", ".join(flag for flag in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if flag in flags) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a SparseEncoder folder (default: a random one of --size)")
    parser.add_argument("--size", choices=sorted(SIZES), default="distilbert-base")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--st-batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    threads = torch.get_num_threads()
    os.environ.setdefault("EMBEDKIT_NUM_THREADS", str(threads))  # ONNX Runtime on the same threads as torch
    _, passages = docstring_pairs(args.texts)
    workdir = Path(tempfile.mkdtemp(prefix="embedkit-sparse-bench-"))
    model_dir = args.model or write_random_splade(workdir, args.size, passages[:32])
    from sentence_transformers.sparse_encoder import SparseEncoder

    from embedkit.sparse import load_sparse

    st = SparseEncoder(str(model_dir), device="cpu")
    rows = {
        "embedkit torch": load_sparse(model_dir, backend="torch", device="cpu"),
        "embedkit onnx": load_sparse(model_dir, backend="onnx", device="cpu", onnx_cache_dir=workdir / "onnx"),
    }
    limit = rows["embedkit torch"].max_length
    lengths = [
        len(e.ids) for e in rows["embedkit torch"].document.encoder.truncating(limit, "right").encode_batch(passages)
    ]
    print(
        f"# {datetime.date.today()} {platform.processor() or platform.machine()} ({cpu_flags()}), {threads} threads, "
        f"torch {torch.__version__}; {'random ' + args.size if args.model is None else model_dir} SPLADE over "
        f"{len(passages)} docstring passages ({sum(lengths)} tokens, max length {st.max_seq_length})"
    )
    runs = {
        "sentence-transformers SparseEncoder": lambda: st.encode_document(
            passages, batch_size=args.st_batch_size, convert_to_tensor=True
        ),
        **{name: (lambda encoder=encoder: encoder.embed_documents(passages)) for name, encoder in rows.items()},
    }
    st.encode_document(passages[:8], batch_size=args.st_batch_size)  # warm up
    for encoder in rows.values():
        encoder.embed_documents(passages[:8])
    seconds = dict.fromkeys(runs, float("inf"))
    outputs: dict[str, object] = {}
    for _ in range(args.repeat):  # rows interleaved, so that a busy spell of the machine hits them all
        for name, run in runs.items():
            started = time.perf_counter()
            outputs[name] = run()
            seconds[name] = min(seconds[name], time.perf_counter() - started)
    st_name = next(iter(runs))
    st_seconds = seconds[st_name]
    reference = outputs[st_name].to_dense().numpy()
    results = [(st_name, st_seconds, 0.0, 0, float((reference != 0).sum(1).mean()))]
    for name in rows:
        mine = np.zeros_like(reference)
        for row, vector in enumerate(outputs[name]):
            mine[row, vector.indices] = vector.values
        diff = float(np.abs(mine - reference).max())
        differs = int(((mine != 0) != (reference != 0)).sum())
        results.append((name, seconds[name], diff, differs, float((mine != 0).sum(1).mean())))
        if diff > 1e-4:  # not the same vectors: no speed figure means anything
            raise SystemExit(f"{name}: max abs diff {diff:.2e} vs sentence-transformers; not timing unequal outputs")
    print()
    print("| what | texts/s | tokens/s | x ST | max abs diff vs ST | nonzeros differing | active dims |")
    print("|------|--------:|---------:|-----:|-------------------:|-------------------:|------------:|")
    for name, took, diff, differs, active in results:
        print(
            f"| {name} | {len(passages) / took:7.1f} | {sum(lengths) / took:8.0f} | "
            f"{st_seconds / took:4.2f} | {diff:.2e} | {differs} | {active:.1f} |"
        )


if __name__ == "__main__":
    main()
