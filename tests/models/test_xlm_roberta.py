"""XLM-RoBERTa family: embedkit's module against transformers' XLMRobertaModel on tiny random checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import embedkit

from ..conftest import write_st_files

TEXTS = ["Hallo Welt", "Bonjour tout le monde, comment allez-vous aujourd'hui?", "x", "word " * 90, "   "]


def write_tiny_xlm_roberta(target: Path, tokenizer_dir: Path, *, masked_lm: bool = False, seed: int = 0) -> Path:
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM, XLMRobertaModel

    torch.manual_seed(seed)
    # pad_token_id 0 matches the borrowed BERT tokenizer's [PAD], so both stacks agree on padding
    config = XLMRobertaConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=0,
        type_vocab_size=1,
    )
    model = (XLMRobertaForMaskedLM if masked_lm else XLMRobertaModel)(config).eval()
    model.save_pretrained(target, safe_serialization=True)
    return write_st_files(target, tokenizer_dir, hidden_size=32, pooling="mean", max_seq_length=128)


def reference(model_dir: Path, texts: list[str]) -> np.ndarray:
    from transformers import AutoTokenizer, XLMRobertaModel

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = XLMRobertaModel.from_pretrained(str(model_dir), add_pooling_layer=False).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    batch.pop("token_type_ids", None)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


@pytest.mark.parametrize("masked_lm", [False, True], ids=["XLMRobertaModel", "roberta-prefixed-MaskedLM"])
def test_matches_transformers_xlm_roberta(tmp_path: Path, minilm_dir: Path, masked_lm: bool) -> None:
    model_dir = write_tiny_xlm_roberta(tmp_path / "xlmr", minilm_dir, masked_lm=masked_lm, seed=4)
    embedder = embedkit.load(model_dir, device="cpu")
    assert embedder.family == "xlm_roberta" and embedder.max_input_tokens == 128
    ours = embedder.embed(TEXTS, normalize=False)
    assert np.abs(ours - reference(model_dir, TEXTS)).max() < 1e-5


def test_padding_invariance(tmp_path: Path, minilm_dir: Path) -> None:
    embedder = embedkit.load(write_tiny_xlm_roberta(tmp_path / "xlmr", minilm_dir, seed=5), device="cpu")
    alone = embedder.embed(["short text"])
    with_long = embedder.embed(["short text", "a much longer neighbour " * 20])[:1]
    assert np.abs(alone - with_long).max() < 1e-6
