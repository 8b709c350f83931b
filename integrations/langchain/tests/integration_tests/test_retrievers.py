"""EmbedkitRetriever on langchain-tests' retriever suite, and against langchain-qdrant on the same collection."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import RetrieversIntegrationTests

from embedkit import StoreError
from langchain_embedkit import EmbedkitEmbeddings, EmbedkitRetriever, qdrant_vector_store

from .conftest import COLLECTION, TECH

QUERIES = ["how do I reset my password", "what do bees do in winter", "branching strategies in git", "sleep"]


class TestEmbedkitRetriever(RetrieversIntegrationTests):
    path: str = ""
    embeddings: EmbedkitEmbeddings | None = None

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _collection(cls, qdrant_path: str, local_embedder) -> None:
        cls.path = qdrant_path
        cls.embeddings = EmbedkitEmbeddings(embedder=local_embedder)

    @property
    def retriever_constructor(self) -> type[EmbedkitRetriever]:
        return EmbedkitRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"collection": COLLECTION, "path": self.path, "embeddings": self.embeddings}

    @property
    def retriever_query_example(self) -> str:
        return "how do I reset my password"


@pytest.fixture()
def retriever(qdrant_path: str, local_embedder) -> EmbedkitRetriever:
    return EmbedkitRetriever(
        collection=COLLECTION, path=qdrant_path, embeddings=EmbedkitEmbeddings(embedder=local_embedder), k=5
    )


def test_documents_carry_metadata_score_and_span(retriever: EmbedkitRetriever) -> None:
    docs = retriever.invoke("how do I reset my password")
    assert len(docs) == 5
    best = docs[0]
    fields = best.metadata["embedkit"]
    assert fields["doc_id"] == "docs/password-reset.md" and best.metadata["source"] == "docs/password-reset.md"
    assert 0 <= fields["chunk_index"] < fields["chunk_count"] and "source" in fields
    scores = [doc.metadata["embedkit"]["score"] for doc in docs]
    assert scores == sorted(scores, reverse=True)
    from pathlib import Path

    source = (Path(__file__).resolve().parents[4] / "examples" / "docs" / "password-reset.md").read_text()
    assert source[fields["start"] : fields["end"]] == best.page_content


def test_filter_and_score_threshold(retriever: EmbedkitRetriever) -> None:
    tech = retriever.invoke("volcanoes and lava", filter={"topic": "tech"})
    assert tech and all(doc.metadata["embedkit"]["doc_id"].removeprefix("docs/") in TECH for doc in tech)
    either = retriever.invoke("volcanoes and lava", filter={"topic": ["tech", "life"]})
    assert either[0].metadata["embedkit"]["doc_id"] == "docs/volcanoes.md"
    strict = retriever.invoke("volcanoes and lava", score_threshold=0.5)
    assert strict and all(doc.metadata["embedkit"]["score"] >= 0.5 for doc in strict) and len(strict) < 5


def test_async_equals_sync(retriever: EmbedkitRetriever) -> None:
    sync = retriever.invoke(QUERIES[1], k=3)
    asynchronous = asyncio.run(retriever.ainvoke(QUERIES[1], k=3))
    assert [doc.id for doc in asynchronous] == [doc.id for doc in sync]


def test_the_model_is_read_from_the_collection(qdrant_path: str) -> None:
    retriever = EmbedkitRetriever(collection=COLLECTION, path=qdrant_path, k=1)  # no embeddings given
    assert retriever.invoke("how do I reset my password")[0].metadata["embedkit"]["doc_id"] == "docs/password-reset.md"


def test_a_missing_collection_is_a_clear_error(qdrant_path: str) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        EmbedkitRetriever(collection="nope", path=qdrant_path)


def test_langchain_qdrant_cannot_open_the_edge_store_and_is_told_how(qdrant_path: str) -> None:
    with pytest.raises(StoreError, match=r"langchain-qdrant cannot open .*embedkit collections push"):
        qdrant_vector_store(COLLECTION, path=qdrant_path)


def test_same_ranking_as_langchain_qdrant(retriever: EmbedkitRetriever, qdrant_path: str, tmp_path) -> None:
    # the Edge store, copied into a qdrant-client local-mode folder: a folder langchain-qdrant opens
    from embedkit.sinks import QdrantSink
    from embedkit.sinks.collections import push

    local = str(tmp_path / "local")
    with QdrantSink(COLLECTION, path=local, engine="client-local") as copy:
        push(QdrantSink(COLLECTION, path=qdrant_path), copy)
    store = qdrant_vector_store(COLLECTION, path=local, embeddings=retriever.embeddings)
    for query in QUERIES:
        ours = retriever.invoke(query, k=5)
        theirs = store.similarity_search_with_score(query, k=5)
        assert [doc.id for doc in ours] == [doc.metadata["_id"] for doc, _ in theirs], query  # its id lives there
        assert [doc.page_content for doc in ours] == [doc.page_content for doc, _ in theirs]
        for doc, (their_doc, score) in zip(ours, theirs, strict=True):
            assert doc.metadata["embedkit"]["score"] == pytest.approx(score, abs=1e-6)
            assert isinstance(their_doc, Document)
            # both see the user's metadata as ingested; langchain-qdrant adds its _id and _collection_name
            ours_user = {key: value for key, value in doc.metadata.items() if key != "embedkit"}
            theirs_user = {key: value for key, value in their_doc.metadata.items() if not key.startswith("_")}
            assert ours_user == theirs_user


def test_rag_example_runs(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[4] / "examples" / "langchain_rag.py"
    question = "how do I reset my password"
    args = [sys.executable, str(example), question, "--qdrant-path", str(tmp_path), "-k", "2"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "20 docs (20 embedded" in done.stdout and "password-reset.md]" in done.stdout
    assert done.stdout.rstrip().endswith(question)
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert "(0 embedded" in again.stdout and "20 unchanged" in again.stdout  # the re-run embeds nothing
