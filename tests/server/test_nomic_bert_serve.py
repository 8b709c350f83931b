"""`embedkit serve` of a NomicBERT checkpoint (nomic-embed-text-v1.5's published layout) answers /embed as local
embedding does, the model card's prefixes included when the request names a prompt."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

import embedkit

from ..models.test_nomic_bert import TEXTS, write_nomic
from .conftest import API_KEY, start_server, stop_server


def test_serve_nomic_bert_equals_local(tmp_path: Path, minilm_dir: Path) -> None:
    model_dir = write_nomic(tmp_path / "nomic", minilm_dir, seed=5)
    local = embedkit.load(model_dir, device="cpu", backend="torch")
    server = start_server(tmp_path, str(model_dir), "--backend", "torch")
    try:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        info = httpx.get(f"{server.url}/info", headers=auth, timeout=30).json()
        assert info["max_input_length"] == local.max_input_tokens
        for prompt_name, task in ((None, None), ("query", "query"), ("search_document", "document")):
            body: dict[str, object] = {"inputs": TEXTS}
            if prompt_name:
                body["prompt_name"] = prompt_name
            response = httpx.post(f"{server.url}/embed", json=body, headers=auth, timeout=60)
            assert response.status_code == 200, response.text
            remote = np.asarray(response.json(), dtype=np.float32)
            np.testing.assert_allclose(remote, local.embed(TEXTS, task=task), atol=1e-5, rtol=0)
    finally:
        stop_server(server)
