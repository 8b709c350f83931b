"""`embedkit serve` of an MPNet folder (all-mpnet-base-v2's layout): a real server answering /embed as the
local embedder does."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

import embedkit

from ..models.test_mpnet import write_mpnet
from .conftest import post, start_server, stop_server


def test_serve_mpnet_embed_equals_local(tmp_path: Path, minilm_dir: Path) -> None:
    model_dir = write_mpnet(tmp_path / "mpnet", minilm_dir, seed=9)
    texts = ["How many people live in London?", "x", "a longer text about relative positions " * 60]
    local = embedkit.load(model_dir, device="cpu", backend="torch")
    server = start_server(tmp_path, str(model_dir), "--backend", "torch", "--device", "cpu", api_key=None)
    try:
        info = httpx.get(f"{server.url}/info", timeout=10).json()
        assert info["max_input_length"] == local.max_input_tokens == 384
        response = post(server, "/embed", {"inputs": texts, "truncate": True})
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(np.asarray(response.json()), local.embed(texts), atol=1e-5, rtol=0)
        raw = post(server, "/embed", {"inputs": texts[:2], "normalize": False})
        np.testing.assert_allclose(np.asarray(raw.json()), local.embed(texts[:2], normalize=False), atol=1e-5, rtol=0)
    finally:
        stop_server(server)
