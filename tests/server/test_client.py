"""embedkit's TEIClient / AsyncTEIClient against `embedkit serve` running as a real process on 127.0.0.1.

The same text must give the same vector remotely and locally (cosine >= 0.99999 in fp32), through
both routes, both faces, and for jina-embeddings-v3 with its task adapters selected by name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import embedkit
from embedkit import AsyncTEIClient, AuthError, InputError, TEIClient

from .conftest import API_KEY, RunningServer, start_server, stop_server

TEXTS = [f"document number {i}: " + "about vectors and search " * (i % 7) for i in range(30)]
JINA_V3 = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "jina-embeddings-v3" / "model"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


@pytest.fixture()
def remote(server: RunningServer) -> Iterator[TEIClient]:
    with TEIClient(server.url, api_key=API_KEY) as client:
        yield client


def test_same_vectors_remote_and_local_across_batches(remote: TEIClient, minilm) -> None:
    vectors = remote.embed(TEXTS)  # 30 texts, the server takes 8 per request: 4 requests, 4 at once
    assert remote.info().max_client_batch_size == 8
    local = minilm.embed(TEXTS)
    assert vectors.shape == local.shape == (30, 384) and vectors.dtype == np.float32
    assert cosines(vectors, local).min() >= 0.99999
    np.testing.assert_allclose(vectors, local, atol=1e-5)  # order kept
    assert remote.dimension == 384 and remote.max_input_tokens == 256 and remote.model_id == minilm.model_id


def test_normalize_off_and_dimensions_match_local(remote: TEIClient, minilm) -> None:
    raw = remote.embed(TEXTS[:5], normalize=False)
    np.testing.assert_allclose(raw, minilm.embed(TEXTS[:5], normalize=False), rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    small = remote.embed(TEXTS[:5], dimensions=64)
    np.testing.assert_allclose(small, minilm.embed(TEXTS[:5], dimensions=64), atol=1e-5)
    left = "start " + "filler " * 400 + "end"
    np.testing.assert_allclose(
        remote.embed([left], truncation_direction="left"), minilm.embed([left], truncation_direction="left"), atol=1e-5
    )


def test_query_and_documents(remote: TEIClient, minilm) -> None:
    np.testing.assert_allclose(remote.embed_query("what is x?"), minilm.embed_query("what is x?"), atol=1e-5)
    np.testing.assert_allclose(remote.embed_documents(TEXTS[:3]), minilm.embed_documents(TEXTS[:3]), atol=1e-5)
    assert remote.tasks == minilm.tasks


def test_async_and_sync_give_identical_vectors(server: RunningServer, remote: TEIClient) -> None:
    async def run() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        async with AsyncTEIClient(server.url, api_key=API_KEY) as client:
            vectors = await client.embed(TEXTS)
            query = await client.embed_query("what is x?")
            streamed = [part async for part in client.embed_iter(iter(TEXTS), window=7)]
            return vectors, query, streamed

    vectors, query, streamed = asyncio.run(run())
    # the server's dynamic batcher may pad a text with different neighbours from one call to the next,
    # which moves the last float32 bit; anything beyond that would be a client bug
    np.testing.assert_allclose(vectors, remote.embed(TEXTS), atol=1e-6)
    np.testing.assert_allclose(query, remote.embed_query("what is x?"), atol=1e-6)
    assert [len(part) for part in streamed] == [7, 7, 7, 7, 2]
    np.testing.assert_allclose(np.concatenate(streamed), vectors, atol=1e-6)


def test_openai_route_float_and_base64(server: RunningServer, minilm) -> None:
    local = minilm.embed(TEXTS[:10])
    for encoding in ("float", "base64"):
        with TEIClient(server.url, api="openai", api_key=API_KEY, encoding_format=encoding) as client:
            vectors = client.embed(TEXTS[:10])
        assert cosines(vectors, local).min() >= 0.99999, encoding
        np.testing.assert_allclose(vectors, local, atol=1e-5)
    with TEIClient(f"{server.url}/v1", api="openai", api_key=API_KEY) as client:  # an OpenAI-style base URL
        np.testing.assert_allclose(client.embed(TEXTS[:2]), local[:2], atol=1e-5)
        with pytest.raises(InputError, match="normalize=False"):
            client.embed(TEXTS[:2], normalize=False)


def test_tokens_counted_remotely_equal_local(remote: TEIClient, minilm) -> None:
    texts = ["héllo wörld", "日本語のテキスト", "plain words here"] * 4
    assert remote.count_tokens(texts) == minilm.count_tokens(texts)
    assert remote.input_overhead("query") == minilm.input_overhead("query")
    tokens = remote.tokenize(["héllo world"])[0]
    assert [(t.text, t.start, t.stop) for t in tokens[1:3]] == [("héllo", 0, 5), ("world", 6, 11)]  # characters


def test_refusals_become_typed_errors(server: RunningServer, remote: TEIClient) -> None:
    long_text = "word " * 600
    with pytest.raises(InputError, match="must have less than 256 tokens") as caught:
        remote.embed(["short", "short", long_text], truncate=False)
    assert caught.value.index == 2
    with TEIClient(server.url, api_key="wrong-key") as client, pytest.raises(AuthError) as refused:
        client.embed(["x"])
    assert refused.value.status == 401 and "wrong-key" not in str(refused.value)
    with pytest.raises(embedkit.UnknownTaskError, match="valid tasks"):
        remote.embed(["x"], task="summarise")


@pytest.fixture(scope="module")
def jina_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    if not (JINA_V3 / "model.safetensors").exists():
        pytest.skip("the jina-embeddings-v3 golden fixture is not beside the project (../shared/fixtures)")
    running = start_server(tmp_path_factory.mktemp("serve-jina"), str(JINA_V3), "--max-client-batch-size", "4")
    yield running
    stop_server(running)


def test_jina_v3_task_adapters_selected_by_name(jina_server: RunningServer) -> None:
    local = embedkit.load(JINA_V3, device="cpu")
    texts = ["how do rotary embeddings work", "Rotary embeddings rotate query and key pairs.", "a third text", "x y"]
    tasks = ["query", "document", "separation", "text-matching", "classification", "retrieval.query"]
    per_text = [tasks[i % len(tasks)] for i in range(len(tasks) * 2)]
    many = [f"{texts[i % 4]} {i}" for i in range(len(per_text))]
    with TEIClient(jina_server.url, api_key=API_KEY) as client:
        assert set(client.info().adapters) == {
            "retrieval.query", "retrieval.passage", "separation", "classification", "text-matching",
        }  # fmt: skip
        for task in tasks:
            np.testing.assert_allclose(client.embed(texts, task=task), local.embed(texts, task=task), atol=2e-6)
        mixed = client.embed(many, task=per_text)  # one call, grouped per task on the wire, order kept
        np.testing.assert_allclose(mixed, local.embed(many, task=per_text), atol=2e-6)
        assert cosines(client.embed_query(texts[0])[None], local.embed_query(texts[0])[None])[0] >= 0.99999
        for dims in (16, 32):
            np.testing.assert_allclose(
                client.embed(texts, task="document", dimensions=dims),
                local.embed(texts, task="document", dimensions=dims),
                atol=2e-6,
            )
        # the adapters really differ, so the equalities above are not trivially true
        assert cosines(client.embed(texts, task="query"), client.embed(texts, task="separation")).max() < 0.999
    with TEIClient(jina_server.url, api="openai", api_key=API_KEY) as client:
        np.testing.assert_allclose(client.embed(texts), local.embed(texts), atol=2e-6)  # no task: base weights
        with pytest.raises(InputError, match="LoRA adapter"):
            client.embed(texts, task="query")


def test_ingest_through_the_server_equals_local_ingest(remote: TEIClient, minilm, example_docs, tmp_path) -> None:
    """Remote chunking (token counts through /tokenize) and embedding give the local collection."""
    from embedkit.ingestion import ingest, load_directory
    from embedkit.sinks import QdrantSink

    collections = {}
    for name, embedder in (("local", minilm), ("remote", remote)):
        sink = QdrantSink("kb", path=tmp_path / name)
        try:
            report = ingest(load_directory(example_docs), embedder, sink, progress=False)
            assert report.embedded == 20
            points = list(sink.points())
            collections[name] = {str(p.id): p for p in points}
        finally:
            sink.close()
    local, remote_points = collections["local"], collections["remote"]
    assert local.keys() == remote_points.keys()
    for key, point in local.items():
        other = remote_points[key]
        # the content hash covers the embedder's weights digest, which a server does not disclose
        same = {k: v for k, v in point.payload.items() if k != "content_hash"}
        assert same == {k: v for k, v in other.payload.items() if k != "content_hash"}
        assert float(np.dot(point.vector, other.vector)) >= 0.99999

    # one collection, both ways: the server reproduces the local collection's probe vectors, so it may
    # write there without --reembed, and finds every document already stored
    with QdrantSink("kb", path=tmp_path / "local") as sink:
        again = ingest(load_directory(example_docs), remote, sink, progress=False)
        assert (again.embedded, again.unchanged) == (0, 20)
        assert sink.recorded_fingerprint()["weights_digest"] is not None  # still the local writer's record
    with QdrantSink("kb", path=tmp_path / "remote") as sink:  # and the other way round
        again = ingest(load_directory(example_docs), minilm, sink, progress=False)
        assert (again.embedded, again.unchanged) == (0, 20)
