"""Cross-encoders on ONNX Runtime (fp32 and int8) against embedkit's torch path, on tiny random checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import embedkit
from embedkit.errors import InputError

from ..conftest import write_tiny_cross_encoder
from .test_cross_encoder import MAX_LENGTH, PAIRS

pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow  # each case exports a graph (about a minute on a busy 2-core machine)


@pytest.mark.parametrize(
    ("family", "labels", "quantize"),
    [
        ("bert", 1, None),
        ("bert", 1, "int8"),
        ("xlm_roberta", 2, None),
        ("gte", 1, None),
        ("gte", 1, "int8"),
        ("modernbert", 1, None),
    ],
)
def test_onnx_matches_torch(tmp_path: Path, family: str, labels: int, quantize: str | None) -> None:
    model_dir = write_tiny_cross_encoder(tmp_path / "ce", family, labels, seed=11, max_length=MAX_LENGTH)
    torch_reranker = embedkit.load_reranker(model_dir, device="cpu", backend="torch")
    cache = tmp_path / "onnx-cache"
    onnx_reranker = embedkit.load_reranker(
        model_dir, device="cpu", backend="onnx", quantize=quantize, onnx_cache_dir=cache
    )
    assert onnx_reranker.backend == "onnx"
    expected = np.array(torch_reranker.predict(PAIRS, raw_scores=True))
    got = np.array(onnx_reranker.predict(PAIRS, raw_scores=True))
    # measured on these checkpoints: fp32 ~2e-9, int8 1.3e-4 (gte) and 3.8e-5 (xlm_roberta) on the logits
    assert np.abs(got - expected).max() < (1e-4 if quantize is None else 2e-3)
    assert onnx_reranker.truncated_count == torch_reranker.truncated_count == 2
    if labels == 1:
        ranked = onnx_reranker.rerank(PAIRS[0][0], [document for _, document in PAIRS[:5]])
        assert sorted(result.index for result in ranked) == list(range(5))
    # the graph is cached: a second load exports nothing
    entries = sorted(path.name for path in cache.iterdir())
    again = embedkit.load_reranker(model_dir, device="cpu", backend="auto", quantize=quantize, onnx_cache_dir=cache)
    assert again.backend == "onnx" and sorted(path.name for path in cache.iterdir()) == entries


def test_onnx_is_refused_where_it_cannot_run(tiny_cross_encoder_dir: Path) -> None:
    with pytest.raises(InputError, match="runs float32 on the CPU"):
        embedkit.load_reranker(tiny_cross_encoder_dir, device="cpu", dtype="bfloat16", backend="onnx")
    with pytest.raises(InputError, match="quantize='int8' runs on the ONNX backend"):
        embedkit.load_reranker(tiny_cross_encoder_dir, device="cpu", backend="torch", quantize="int8")
    # auto with another dtype settles for torch
    reranker = embedkit.load_reranker(tiny_cross_encoder_dir, device="cpu", dtype="bfloat16", backend="auto")
    assert reranker.backend == "torch"
