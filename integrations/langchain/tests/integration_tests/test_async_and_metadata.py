"""The async methods keep every setting of the wrapped client; retrieved metadata is the user's, untouched.

Against the key-protected `embedkit serve` of conftest.py (its key is given to the client, never to the
environment) and embedded Qdrant collections written by embedkit's ingest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedkit import AsyncTEIClient, InputError, TEIClient
from embedkit.ingestion import Document, ingest
from embedkit.remote import RetryPolicy
from embedkit.sinks import QdrantSink
from langchain_embedkit import EmbedkitEmbeddings, EmbedkitRetriever, qdrant_vector_store

from .conftest import API_KEY, COLLECTION

TEXTS = ["how do I reset my password", "Qdrant stores vectors", "ünïcödé 日本語", "a fourth text", "and a fifth"]
ATOL = 1e-6  # the server's dynamic batcher may move the last float32 bit; a settings difference moves far more


@pytest.fixture(autouse=True)
def _no_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # the bug: the async path took EMBEDKIT_API_KEY from the environment instead of the client's key
    monkeypatch.delenv("EMBEDKIT_API_KEY", raising=False)


def both_ways(embeddings: EmbedkitEmbeddings) -> None:
    """aembed_* == embed_*, each async call on a fresh event loop, as LangChain callers often do."""
    documents, query = embeddings.embed_documents(TEXTS), embeddings.embed_query(TEXTS[0])
    np.testing.assert_allclose(asyncio.run(embeddings.aembed_documents(TEXTS)), documents, atol=ATOL)
    np.testing.assert_allclose(asyncio.run(embeddings.aembed_query(TEXTS[0])), query, atol=ATOL)
    np.testing.assert_allclose(asyncio.run(embeddings.aembed_query(TEXTS[0])), query, atol=ATOL)  # a third loop


def test_async_equals_sync_over_a_key_protected_client(server_url: str) -> None:
    client = TEIClient(server_url, api_key=API_KEY)
    embeddings = EmbedkitEmbeddings(embedder=client)
    both_ways(embeddings)
    assert API_KEY not in repr(embeddings) and API_KEY not in repr(embeddings._remote_async())


def test_async_carries_prompts_api_timeout_batching_and_retry(server_url: str) -> None:
    prompts = {"query": "Represent this question for retrieval: ", "document": "passage: "}
    client = TEIClient(
        server_url,
        api="openai",
        api_key=API_KEY,
        prompts=prompts,
        timeout=15.0,
        batch_size=2,
        max_concurrency=3,
        retry=RetryPolicy(attempts=2, backoff=0.05),
        encoding_format="float",
    )
    embeddings = EmbedkitEmbeddings(embedder=client)
    both_ways(embeddings)
    assert embeddings._remote_async().settings == client.settings
    plain = EmbedkitEmbeddings(embedder=TEIClient(server_url, api_key=API_KEY))
    assert float(np.dot(plain.embed_query(TEXTS[0]), embeddings.embed_query(TEXTS[0]))) < 0.99  # prompts applied
    # a setting changed on the client after the first async call reaches the async path too
    client.max_concurrency = 1
    client.retry = RetryPolicy(attempts=1)
    assert embeddings._remote_async().settings == client.settings
    both_ways(embeddings)


def test_an_async_client_may_be_wrapped_too(server_url: str) -> None:
    embeddings = EmbedkitEmbeddings(embedder=AsyncTEIClient(server_url, api_key=API_KEY, batch_size=2))
    both_ways(embeddings)


def test_retriever_ainvoke_equals_invoke_through_the_server(server_url: str, qdrant_path: str) -> None:
    embeddings = EmbedkitEmbeddings(embedder=TEIClient(server_url, api_key=API_KEY))
    retriever = EmbedkitRetriever(collection=COLLECTION, path=qdrant_path, embeddings=embeddings, k=3)
    for query in ("what do bees do in winter", "how do I reset my password"):
        sync = retriever.invoke(query)
        asynchronous = asyncio.run(retriever.ainvoke(query))
        assert [doc.id for doc in asynchronous] == [doc.id for doc in sync]
        scores = [doc.metadata["embedkit"]["score"] for doc in sync]
        assert [doc.metadata["embedkit"]["score"] for doc in asynchronous] == pytest.approx(scores, abs=1e-5)


# -- metadata that uses embedkit's own field names ---------------------------------------------------

CLASHING = {
    "score": "five stars",
    "doc_id": "user-42",
    "start": "2020-01-01",
    "end": "2020-12-31",
    "chunk_index": "not a number",
    "headings": ["mine"],
    "source": "my own source",
    "topic": "reviews",
}


@pytest.fixture()
def clashing_store(tmp_path: Path, local_embedder) -> Iterator[QdrantSink]:
    docs = [
        Document(
            "reviews/a.md", "# Reviews\n\n" + "The blender is loud but fast. " * 3, dict(CLASHING), source="reviews"
        ),
        Document("reviews/b.md", "Bees keep warm in winter by shivering.", {"score": 3, "end": None}, source="reviews"),
    ]
    # qdrant-client's local mode: langchain-qdrant reads the same collection below through its client
    with QdrantSink("kb", path=tmp_path / "q", engine="client-local") as sink:
        assert ingest(docs, local_embedder, sink, progress=False).embedded == 2
        yield sink


def test_user_metadata_comes_back_unchanged(clashing_store: QdrantSink, local_embedder) -> None:
    embeddings = EmbedkitEmbeddings(embedder=local_embedder)
    retriever = EmbedkitRetriever(collection="kb", client=clashing_store.client, embeddings=embeddings, k=5)
    docs = {doc.metadata["embedkit"]["doc_id"]: doc for doc in retriever.invoke("is the blender loud")}
    first, second = docs["reviews/a.md"], docs["reviews/b.md"]
    assert {k: v for k, v in first.metadata.items() if k != "embedkit"} == CLASHING
    assert {k: v for k, v in second.metadata.items() if k != "embedkit"} == {"score": 3, "end": None}
    fields = first.metadata["embedkit"]
    assert fields["source"] == "reviews" and fields["chunk_index"] == 0 and fields["headings"] == ["Reviews"]
    assert isinstance(fields["score"], float) and fields["chunk_count"] == 1
    assert (fields["start"], fields["end"]) == (0, len(first.page_content))  # the span in the source, not the user's
    # filters still reach the user's own keys
    assert [d.metadata["embedkit"]["doc_id"] for d in retriever.invoke("blender", filter={"topic": "reviews"})] == [
        "reviews/a.md"
    ]
    # and langchain-qdrant, reading the same collection, sees the metadata as it was written
    store = qdrant_vector_store("kb", client=clashing_store.client, embeddings=embeddings)
    theirs = {doc.page_content: doc.metadata for doc in store.similarity_search("is the blender loud", k=5)}
    assert {k: v for k, v in theirs[first.page_content].items() if not k.startswith("_")} == CLASHING


def test_metadata_holding_the_reserved_key_is_an_error_not_a_merge(tmp_path: Path, local_embedder) -> None:
    mine = {"embedkit": {"version": "mine"}, "score": 1}
    embeddings = EmbedkitEmbeddings(embedder=local_embedder)
    with QdrantSink("kb", location=":memory:") as sink:
        ingest([Document("a", "some text", dict(mine), source="s")], local_embedder, sink, progress=False)
        retriever = EmbedkitRetriever(collection="kb", client=sink.client, embeddings=embeddings)
        with pytest.raises(InputError, match=r"its own metadata key 'embedkit'.*embedkit_key="):
            retriever.invoke("text")
        elsewhere = EmbedkitRetriever(collection="kb", client=sink.client, embeddings=embeddings, embedkit_key="_ek")
        (doc,) = elsewhere.invoke("text")
        assert {k: v for k, v in doc.metadata.items() if k != "_ek"} == mine and doc.metadata["_ek"]["doc_id"] == "a"
