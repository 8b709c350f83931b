"""Qwen3-Reranker on CPU: embedkit's Qwen3Reranker vs the model card's transformers code, same weights and pairs.

    python benchmarks/rerank_llm.py                   # Qwen3-Reranker-0.6B-shaped random checkpoint, 32 pairs
    python benchmarks/rerank_llm.py --layers 4 --pairs 64
    python benchmarks/rerank_llm.py --model PATH      # a real Qwen3-Reranker folder instead

The checkpoint is RANDOM (no hub here): it measures speed only. Its shape is Qwen3-Reranker-0.6B's (28 layers,
hidden 1024, MLP 3072, 16 query / 8 key-value heads of 128, a 151,669-row tied embedding table and head),
saved by transformers' Qwen3ForCausalLM. The tokenizer is a byte-level BPE trained here on the benchmark's
texts, its vocabulary padded with unreachable entries to Qwen's size and Qwen's special tokens at Qwen's ids,
so that token counts are natural English's and the head has the real number of rows.

Rows, all fp32, the same pairs, torch's thread count:
- card: the model card's code (`process_inputs` with left padding, `model(**inputs).logits[:, -1, :]`,
  log_softmax over [no, yes], exp) in batches of `--card-batch`; its forward projects every position onto
  the whole vocabulary.
- card + logits_to_keep=1: the same, with transformers' option to project the last position only.
- embedkit: `load_qwen3_reranker(...).score(pairs)`: token-budget batches (2048 padded tokens on the CPU),
  right padding, the two head rows at each pair's last token.
Before any figure is printed, embedkit's scores are compared with the card's (max abs diff). Each row is warmed
up on a few pairs, then timed over all pairs, best of `--repeat` runs interleaved across the rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu import docstring_pairs  # the stdlib docstring set

QWEN3_RERANKER_0_6B = {
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151669,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
END_OF_TEXT_ID = 151643  # Qwen's <|endoftext|>; <|im_start|>, <|im_end|> follow
CARD_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
CARD_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def write_tokenizer(target: Path, corpus: list[str]) -> None:
    """Byte-level BPE trained on `corpus`, vocabulary padded to Qwen's special-token ids, Qwen's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=16000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator([*corpus, *(["yes", "no"] * 50)], trainer)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    raw = json.loads(tokenizer.to_str())
    vocab = raw["model"]["vocab"]
    for index in range(len(vocab), END_OF_TEXT_ID):  # never produced by a merge: only the table's size
        vocab[f"<|unused_{index}|>"] = index
    tokenizer = Tokenizer.from_str(json.dumps(raw))
    tokenizer.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer.add_tokens(["<think>", "</think>"])
    if tokenizer.token_to_id("<|endoftext|>") != END_OF_TEXT_ID or tokenizer.token_to_id("yes") is None:
        raise RuntimeError("the benchmark tokenizer did not come out as planned")
    tokenizer.save(str(target / "tokenizer.json"))
    (target / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    )


def write_random_reranker(target: Path, layers: int, corpus: list[str]) -> Path:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if (target / "config.json").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = Qwen3Config(num_hidden_layers=layers, architectures=["Qwen3ForCausalLM"], **QWEN3_RERANKER_0_6B)
    Qwen3ForCausalLM(config).save_pretrained(str(target))
    write_tokenizer(target, corpus)
    return target


class Card:
    """The model card's usage code on transformers' Qwen3ForCausalLM."""

    def __init__(self, model_dir: Path, batch_size: int, *, last_only: bool) -> None:
        from transformers import AutoTokenizer, Qwen3ForCausalLM

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
        self.model = Qwen3ForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.no = self.tokenizer.convert_tokens_to_ids("no")
        self.yes = self.tokenizer.convert_tokens_to_ids("yes")
        self.prefix = self.tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
        self.suffix = self.tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)
        self.batch_size, self.last_only = batch_size, last_only

    @torch.inference_mode()
    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(pairs), self.batch_size):
            texts = [
                f"<Instruct>: {CARD_INSTRUCTION}\n<Query>: {q}\n<Document>: {d}"
                for q, d in pairs[start : start + self.batch_size]
            ]
            inputs = self.tokenizer(
                texts,
                padding=False,
                truncation="longest_first",
                return_attention_mask=False,
                max_length=8192 - len(self.prefix) - len(self.suffix),
            )
            inputs["input_ids"] = [self.prefix + ids + self.suffix for ids in inputs["input_ids"]]
            batch = self.tokenizer.pad(inputs, padding=True, return_tensors="pt")
            extra = {"logits_to_keep": 1} if self.last_only else {}
            logits = self.model(**batch, **extra).logits[:, -1, :]
            pair = torch.nn.functional.log_softmax(torch.stack([logits[:, self.no], logits[:, self.yes]], 1), 1)
            scores += pair[:, 1].exp().tolist()
        return scores


def cpu_flags() -> str:
    flags: set[str] = set()
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return f"{model}; " + ", ".join(f for f in wanted if f in flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a Qwen3-Reranker folder (default: a random 0.6B-shaped one)")
    parser.add_argument("--layers", type=int, default=28, help="decoder layers of the random checkpoint")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--card-batch", type=int, default=8, help="pairs per forward pass of the card's code")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from embedkit.rerank.qwen3 import load_qwen3_reranker

    queries, passages = docstring_pairs(max(args.pairs, 64))
    # each query against a passage that is not its own, every other pair: relevant and irrelevant mixed
    pairs = [(queries[i], passages[i if i % 2 == 0 else (i * 7 + 3) % len(passages)]) for i in range(args.pairs)]
    root = Path(tempfile.gettempdir()) / "embedkit-bench-qwen3-reranker"
    model_dir = args.model or write_random_reranker(root / f"layers{args.layers}", args.layers, queries + passages)

    reranker = load_qwen3_reranker(model_dir, device="cpu")
    rows: dict[str, Callable[[list[tuple[str, str]]], list[float]]] = {
        "card (transformers, as published)": Card(model_dir, args.card_batch, last_only=False).score,
        "card + logits_to_keep=1": Card(model_dir, args.card_batch, last_only=True).score,
        "embedkit Qwen3Reranker": reranker.score,
    }
    tokens = sum(len(row) for row in reranker.encode_pairs(pairs, CARD_INSTRUCTION)[0])
    reference = rows["card (transformers, as published)"](pairs)
    ours = reranker.score(pairs)
    diff = max(abs(a - b) for a, b in zip(ours, reference, strict=True))
    print(f"scores: max abs diff embedkit vs card {diff:.2e} over {len(pairs)} pairs ({tokens} prompt tokens)")

    best = dict.fromkeys(rows, float("inf"))
    for run in rows.values():
        run(pairs[:2])  # warm-up
    for _ in range(args.repeat):
        for name, run in rows.items():
            start = time.perf_counter()
            run(pairs)
            best[name] = min(best[name], time.perf_counter() - start)

    print(
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {platform.python_version()}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"cpu: {cpu_flags()}; load average {os.getloadavg()[0]:.2f}")
    print(f"command: python {' '.join(sys.argv)}; model {model_dir}")
    base = best["card (transformers, as published)"]
    print("| row | seconds | pairs/s | vs card |")
    print("|---|---:|---:|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.2f} | {len(pairs) / seconds:.2f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
