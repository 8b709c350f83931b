"""Tokenizers for the benchmark checkpoints, trained here on examples/docs so the repository stands alone.

Speed does not depend on which vocabulary a model has (only the embedding lookup's table size changes,
and FLOPs are counted without it); what matters is that both sides of a comparison use the same
tokenizer and that its special tokens behave like the real model's:

- `xlmr_like`: BPE with `<s> $A </s>`, `<pad>` id 1 (jina-embeddings-v3 / XLM-RoBERTa's specials and ids)
- `qwen_like`: byte-level BPE appending `<|endoftext|>` to every text, padding on the left
  (Qwen3-Embedding's tokenizer.json, which last-token pooling relies on)
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parents[1]
VOCAB_SIZE = 4000


def _corpus() -> list[str]:
    return [path.read_text() for path in sorted((ROOT / "examples" / "docs").glob("*.md"))]


def xlmr_like(target: Path) -> Path:
    """Writes tokenizer.json + tokenizer_config.json + special_tokens_map.json into `target`."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    specials_map = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    return _save(target, tokenizer, specials_map)


def qwen_like(target: Path) -> Path:
    """Writes tokenizer.json + tokenizer_config.json into `target`."""
    end = "<|endoftext|>"
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=[end], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {end}", pair=f"$A {end} $B:1 {end}:1", special_tokens=[(end, tokenizer.token_to_id(end))]
    )
    return _save(target, tokenizer, {"eos_token": end, "pad_token": end}, padding_side="left")


def _save(target: Path, tokenizer: Tokenizer, specials: dict[str, str], padding_side: str = "right") -> Path:
    target.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(target / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "padding_side": padding_side, **specials}
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (target / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    return target
