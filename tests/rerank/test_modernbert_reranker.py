"""ModernBERT cross-encoders (gte-reranker-modernbert-base: ModernBertForSequenceClassification) beyond the shared
parity table of test_cross_encoder.py (which covers mean pooling, one and two labels): CLS pooling, the head's
published names, and a ModernBERT embedding checkpoint refused as a reranker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

import embedkit
from embedkit.errors import ModelLoadError

from ..conftest import write_tiny_cross_encoder
from ..models.test_modernbert import write_modernbert
from .test_cross_encoder import MAX_LENGTH, PAIRS, hf_logits


@pytest.fixture(scope="module")
def cls_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("modernbert-ce-cls") / "model"
    return write_tiny_cross_encoder(target, "modernbert", 1, seed=5, max_length=MAX_LENGTH, classifier_pooling="cls")


def test_cls_pooling_matches_transformers_and_sentence_transformers(cls_reranker_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    names = set(load_file(str(cls_reranker_dir / "model.safetensors")))
    assert {"head.dense.weight", "head.norm.weight", "classifier.weight", "classifier.bias"} <= names
    assert "model.layers.0.mlp.Wi.weight" in names and "model.layers.0.attn_norm.weight" not in names
    reranker = embedkit.load_reranker(cls_reranker_dir, device="cpu", backend="torch")
    assert reranker.fingerprint()["family"] == "modernbert"
    raw = np.array(reranker.predict(PAIRS, raw_scores=True))
    assert np.abs(raw - hf_logits(cls_reranker_dir, PAIRS)).max() < 1e-5
    expected = CrossEncoder(str(cls_reranker_dir), device="cpu").predict(PAIRS)
    assert np.abs(np.array(reranker.score(PAIRS)) - np.asarray(expected)).max() < 1e-5


def test_cls_and_mean_pooling_differ(tmp_path: Path, cls_reranker_dir: Path) -> None:
    """The pooling is read from config.json: the same weights pooled by the mean score otherwise."""
    mean_dir = write_tiny_cross_encoder(tmp_path / "mean", "modernbert", 1, seed=5, max_length=MAX_LENGTH)
    cls = embedkit.load_reranker(cls_reranker_dir, device="cpu", backend="torch").score(PAIRS, raw_scores=True)
    mean = embedkit.load_reranker(mean_dir, device="cpu", backend="torch").score(PAIRS, raw_scores=True)
    assert np.abs(np.array(cls) - np.array(mean)).max() > 1e-3
    assert np.abs(np.array(mean) - hf_logits(mean_dir, PAIRS)[:, 0]).max() < 1e-5


def test_embedding_checkpoint_is_no_reranker(tmp_path: Path, minilm_dir: Path) -> None:
    model_dir = write_modernbert(tmp_path / "embedder", minilm_dir, seed=1, mlm_head=False)
    (model_dir / "config.json").write_text(
        (model_dir / "config.json").read_text().replace("ModernBertModel", "ModernBertForSequenceClassification")
    )
    with pytest.raises(ModelLoadError, match=r"no sequence-classification head in the weights \(no classifier\.\*"):
        embedkit.load_reranker(model_dir, device="cpu")
