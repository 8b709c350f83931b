"""DistilBERT family: embedkit's module against transformers' DistilBertModel on tiny random checkpoints
(the masked-LM head, for SPLADE, is held to sentence-transformers in tests/sparse/test_splade.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import embedkit

from ..conftest import write_st_files

TEXTS = ["Hello world", "DistilBERT has six layers and no token types, usually.", "x", "word " * 90, "   "]


def write_tiny_distilbert(target: Path, tokenizer_dir: Path, *, masked_lm: bool, seed: int = 0) -> Path:
    from transformers import DistilBertConfig, DistilBertForMaskedLM, DistilBertModel

    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=30522, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128
    )
    model = (DistilBertForMaskedLM if masked_lm else DistilBertModel)(config).eval()
    model.save_pretrained(target, safe_serialization=True)
    return write_st_files(target, tokenizer_dir, hidden_size=32, pooling="mean", max_seq_length=128)


def reference(model_dir: Path, texts: list[str]) -> np.ndarray:
    from transformers import AutoTokenizer, DistilBertModel

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = DistilBertModel.from_pretrained(str(model_dir)).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    batch.pop("token_type_ids", None)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


@pytest.mark.parametrize("masked_lm", [False, True], ids=["DistilBertModel", "distilbert-prefixed-MaskedLM"])
def test_matches_transformers_distilbert(tmp_path: Path, minilm_dir: Path, masked_lm: bool) -> None:
    model_dir = write_tiny_distilbert(tmp_path / "distilbert", minilm_dir, masked_lm=masked_lm, seed=5)
    embedder = embedkit.load(model_dir, device="cpu", backend="torch")
    assert embedder.family == "distilbert" and embedder.max_input_tokens == 128
    ours = embedder.embed(TEXTS, normalize=False)
    assert np.abs(ours - reference(model_dir, TEXTS)).max() < 1e-5
    together = embedder.embed(TEXTS)
    alone = np.concatenate([embedder.embed([text]) for text in TEXTS])
    assert np.abs(together - alone).max() < 1e-5
