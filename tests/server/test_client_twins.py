"""TEIClient / AsyncTEIClient against a key-protected `embedkit serve` on 127.0.0.1: twins that keep every
setting, one async client over many event loops, construction without requests, token-id inputs, and
ingest through the OpenAI-compatible route with a local tokenizer counting the chunks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedkit import AsyncTEIClient, InputError, TEIClient
from embedkit.chunking import default_chunker
from embedkit.remote import ClientSettings, RetryPolicy
from embedkit.remote.base import ClientBase

from .conftest import API_KEY, RunningServer

TEXTS = [f"text number {i}: " + "about vectors and search " * (i % 5) for i in range(11)]
# the server's dynamic batcher may pad a text with different neighbours from one call to the next, which moves
# the last float32 bit (see test_client.py); anything beyond that would be a client difference
ATOL = 1e-6


@pytest.fixture(autouse=True)
def _no_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # the key must travel with the client: a twin that fell back to the environment would be refused
    monkeypatch.delenv("EMBEDKIT_API_KEY", raising=False)


def test_every_constructor_setting_is_copied_by_a_twin() -> None:
    """A setting added to the constructor later must be a field of ClientSettings, which a twin takes whole,
    and must land there, or this fails."""
    keywords = {
        name for name, p in inspect.signature(ClientBase.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY
    }
    fields = {field.name for field in dataclasses.fields(ClientSettings)}
    assert keywords - {"info"} == fields - {"base_url"}  # info is adopted with what the client learned
    given = {
        "api": "openai",
        "model": "m",
        "api_key": "k-1",
        "timeout": httpx.Timeout(7.0),
        "max_concurrency": 3,
        "batch_size": 5,
        "retry": RetryPolicy(attempts=2),
        "prompts": {"query": "q: "},
        "max_input_tokens": 99,
        "encoding_format": "float",
        "max_request_bytes": 1234,
        "max_response_bytes": 5678,
    }
    assert given.keys() == keywords - {"info"}
    sync = TEIClient("http://127.0.0.1:9", **given)
    assert {name: getattr(sync.settings, name) for name in given} == given
    twin = AsyncTEIClient.from_client(sync)
    assert twin.settings == sync.settings and TEIClient.from_client(twin).settings == sync.settings


def test_async_twin_carries_the_key_and_every_setting(server: RunningServer) -> None:
    retry = RetryPolicy(attempts=2, backoff=0.05)
    with TEIClient(
        server.url, api_key=API_KEY, batch_size=3, max_concurrency=2, timeout=20.0, retry=retry, max_request_bytes=900
    ) as sync:
        expected = sync.embed(TEXTS)
        query = sync.embed_query("what is x?")
        twin = AsyncTEIClient.from_client(sync)
        assert twin.settings == sync.settings and twin.server_info == sync.server_info

        async def run() -> tuple[np.ndarray, np.ndarray]:
            return await twin.embed(TEXTS), await twin.embed_query("what is x?")

        vectors, async_query = asyncio.run(run())
        np.testing.assert_allclose(vectors, expected, atol=ATOL)
        np.testing.assert_allclose(async_query, query, atol=ATOL)
        # and back: the sync twin of an async client that never read /info
        fresh = AsyncTEIClient(server.url, api_key=API_KEY, batch_size=3)
        with TEIClient.from_client(fresh) as back:
            assert back.settings == fresh.settings
            np.testing.assert_allclose(back.embed(TEXTS), expected, atol=ATOL)


def test_twins_carry_prompts_and_the_openai_route(server: RunningServer) -> None:
    prompts = {"query": "Represent this question for retrieval: ", "document": ""}
    with TEIClient(server.url, api="openai", api_key=API_KEY, prompts=prompts, encoding_format="float") as sync:
        query, docs = sync.embed_query("what is x?"), sync.embed_documents(TEXTS[:3])
        twin = AsyncTEIClient.from_client(sync)

        async def run() -> tuple[np.ndarray, np.ndarray]:
            return await twin.embed_query("what is x?"), await twin.embed_documents(TEXTS[:3])

        async_query, async_docs = asyncio.run(run())
    np.testing.assert_allclose(async_query, query, atol=ATOL)
    np.testing.assert_allclose(async_docs, docs, atol=ATOL)
    with TEIClient(server.url, api_key=API_KEY) as plain:
        assert float(np.dot(plain.embed_query("what is x?"), query)) < 0.99  # the prompt really applied


def test_one_async_client_on_three_asyncio_runs(server: RunningServer) -> None:
    """A script's or notebook's successive asyncio.run calls: the second used to raise 'Event loop is closed'."""
    client = AsyncTEIClient(server.url, api_key=API_KEY, batch_size=4)
    results = [asyncio.run(client.embed(TEXTS)) for _ in range(3)]
    with TEIClient(server.url, api_key=API_KEY) as sync:
        expected = sync.embed(TEXTS)
    for vectors in results:
        np.testing.assert_allclose(vectors, expected, atol=ATOL)


def test_one_async_client_on_two_loops_alternately(server: RunningServer) -> None:
    client = AsyncTEIClient(server.url, api_key=API_KEY, batch_size=4)
    loops = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        results = [loops[i % 2].run_until_complete(client.embed(TEXTS[: 3 + i])) for i in range(6)]
        assert [len(r) for r in results] == [3, 4, 5, 6, 7, 8]
        np.testing.assert_allclose(results[5][:3], results[0], atol=ATOL)
    finally:
        # the two ways a loop's connections are closed: aclose() on it, or the loop's own shutdown
        loops[0].run_until_complete(client.aclose())
        loops[1].run_until_complete(loops[1].shutdown_asyncgens())
        for loop in loops:
            loop.close()
    np.testing.assert_allclose(asyncio.run(client.embed(TEXTS[:3])), results[0], atol=ATOL)  # and a third loop


class CountingTransport(httpx.HTTPTransport):
    """A real transport that remembers what it sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url.path}")
        return super().handle_request(request)


def test_construction_sends_nothing_then_the_first_call_works(server: RunningServer, minilm) -> None:
    from langchain_embedkit import EmbedkitEmbeddings

    transport = CountingTransport()
    client = TEIClient(server.url, api_key=API_KEY, transport=transport)
    chunker = default_chunker(client)
    embeddings = EmbedkitEmbeddings(embedder=client)
    assert transport.sent == []
    text = "# Guide\n\n" + "\n\n".join(f"Paragraph {i}: " + "words about search " * 30 for i in range(6))
    assert chunker.split(text) == default_chunker(minilm).split(text)  # limit and prompt read on the first split
    assert transport.sent[0] == "GET /info" and (chunker.max_tokens, chunker.overlap_tokens) == (256, 32)
    np.testing.assert_allclose(embeddings.embed_query("what is x?"), minilm.embed_query("what is x?"), atol=1e-5)
    client.close()


def test_token_ids_embed_as_their_text(server: RunningServer, minilm) -> None:
    """TEI decodes token ids and tokenizes the text again: ids with their special tokens give the text's vector."""
    texts = ["hello world", "token ids travel as lists of ints"]
    ids = [encoding.ids for encoding in minilm.tokenize(texts)]  # with [CLS] ... [SEP]
    for api in ("tei", "openai"):
        with TEIClient(server.url, api=api, api_key=API_KEY) as remote:
            np.testing.assert_allclose(remote.embed(ids), remote.embed(texts), atol=1e-5, err_msg=api)
            mixed = remote.embed([texts[0], ids[1]])
            np.testing.assert_allclose(mixed, minilm.embed(texts), atol=1e-5, err_msg=api)


def test_ingest_through_the_openai_route_takes_a_tokenizer(
    server: RunningServer,
    minilm,
    minilm_dir: Path,
    example_docs: Path,
    tmp_path: Path,
) -> None:
    from embedkit.ingestion import ingest, load_directory
    from embedkit.sinks import QdrantSink

    remote = TEIClient(server.url, api="openai", api_key=API_KEY)
    with QdrantSink("kb", path=tmp_path / "refused") as sink:
        with pytest.raises(InputError, match=r"no /tokenize.*tokenizer=.*--tokenizer PATH"):
            ingest(load_directory(example_docs), remote, sink, progress=False)
        assert sink.recorded_fingerprint() is None  # refused before anything was written
    collections = {}
    for name, embedder, chunker in (
        ("local", minilm, None),
        ("openai", remote, default_chunker(remote, tokenizer=minilm_dir)),
    ):
        with QdrantSink("kb", path=tmp_path / name) as sink:
            report = ingest(load_directory(example_docs), embedder, sink, chunker=chunker, progress=False)
            assert report.embedded == 20, name
            points = list(sink.points())
            collections[name] = {str(p.id): p for p in points}
    local, through_openai = collections["local"], collections["openai"]
    assert local.keys() == through_openai.keys()  # the same chunks: the tokenizer counted as the model does
    for key, point in local.items():
        other = through_openai[key]
        same = {k: v for k, v in point.payload.items() if k != "content_hash"}
        assert same == {k: v for k, v in other.payload.items() if k != "content_hash"}
        assert float(np.dot(point.vector, other.vector)) >= 0.99999
    remote.close()
