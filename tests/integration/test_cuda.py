"""CUDA correctness: the same vectors on GPU as on CPU (skipped cleanly where torch sees no GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from .test_minilm_parity import TEXTS


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "min_cosine"), [("float32", 0.99999), ("float16", 0.999)])
def test_cuda_matches_cpu(minilm, dtype: str, min_cosine: float) -> None:
    import embedkit

    gpu = embedkit.load(device="cuda", dtype=dtype)
    ours, reference = gpu.embed(TEXTS), minilm.embed(TEXTS)
    assert ours.dtype == np.float32
    assert (ours * reference).sum(axis=1).min() >= min_cosine
