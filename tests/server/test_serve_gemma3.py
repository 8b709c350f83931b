"""`embedkit serve` of a tiny EmbeddingGemma (Gemma3 encoder, sliding window, two Dense projections)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

import embedkit

from ..models.test_gemma3 import PROMPTS, TEXTS, write_gemma3
from .conftest import API_KEY, start_server, stop_server


def test_serve_embeds_as_local(tmp_path: Path) -> None:
    model_dir = write_gemma3(tmp_path / "embeddinggemma", seed=7)
    local = embedkit.load(model_dir, device="cpu", backend="torch")
    server = start_server(tmp_path, str(model_dir), "--backend", "torch", "--device", "cpu")
    try:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        response = httpx.post(f"{server.url}/embed", json={"inputs": TEXTS}, headers=auth, timeout=60)
        assert response.status_code == 200, response.text
        remote = np.asarray(response.json(), dtype=np.float32)
        assert remote.shape == (len(TEXTS), local.dimension)
        assert np.abs(remote - local.embed(TEXTS)).max() < 1e-5
        # a prompt by name, and a Matryoshka cut, as the server's TEI fields ask for them
        body = {"inputs": TEXTS[:2], "prompt_name": "query", "dimensions": 16}
        cut = np.asarray(httpx.post(f"{server.url}/embed", json=body, headers=auth, timeout=60).json())
        assert np.abs(cut - local.embed(TEXTS[:2], task="query", dimensions=16)).max() < 1e-5
        info = httpx.get(f"{server.url}/info", headers=auth, timeout=10).json()
        assert info["prompts"]["query"] == PROMPTS["query"]
    finally:
        stop_server(server)
