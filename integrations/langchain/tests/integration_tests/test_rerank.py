"""Reranking in LangChain: EmbedkitRetriever with a reranker, and EmbedkitRerank (local and served) under
ContextualCompressionRetriever; each returns the reranker's own order of the candidates."""

from __future__ import annotations

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document

from embedkit import load_reranker
from langchain_embedkit import EmbedkitEmbeddings, EmbedkitRerank, EmbedkitRetriever

from .conftest import COLLECTION

QUERY = "what do bees do in winter"


@pytest.fixture(scope="module")
def reranker(cross_encoder_dir: str):
    return load_reranker(cross_encoder_dir, device="cpu")


def retriever(qdrant_path: str, local_embedder, k: int, **kwargs) -> EmbedkitRetriever:
    embeddings = EmbedkitEmbeddings(embedder=local_embedder)
    return EmbedkitRetriever(collection=COLLECTION, path=qdrant_path, embeddings=embeddings, k=k, **kwargs)


def test_retriever_with_a_reranker_returns_the_rerankers_order(
    qdrant_path: str, local_embedder, reranker, cross_encoder_dir: str
) -> None:
    candidates = retriever(qdrant_path, local_embedder, 12).invoke(QUERY)
    expected = reranker.rerank(QUERY, [doc.page_content for doc in candidates], top_k=4)
    for given in (reranker, None):  # the Reranker itself, or its folder to load
        reranking = retriever(qdrant_path, local_embedder, 4, fetch_k=12, reranker=given or cross_encoder_dir)
        docs = reranking.invoke(QUERY)
        assert [doc.id for doc in docs] == [candidates[r.index].id for r in expected]
        fields = [doc.metadata["embedkit"] for doc in docs]
        assert [f["score"] for f in fields] == pytest.approx([r.score for r in expected], abs=1e-6)
        assert [f["retrieval_score"] for f in fields] == [
            candidates[r.index].metadata["embedkit"]["score"] for r in expected
        ]
    assert [doc.id for doc in docs] != [doc.id for doc in candidates[:4]]  # reranking changed the order


async def test_compression_retriever_with_embedkit_rerank(qdrant_path: str, local_embedder, reranker) -> None:
    base = retriever(qdrant_path, local_embedder, 10)
    candidates = base.invoke(QUERY)
    expected = reranker.rerank(QUERY, [doc.page_content for doc in candidates], top_k=3)
    compressing = ContextualCompressionRetriever(base_compressor=EmbedkitRerank(reranker=reranker), base_retriever=base)
    for docs in (compressing.invoke(QUERY), await compressing.ainvoke(QUERY)):
        assert [doc.id for doc in docs] == [candidates[r.index].id for r in expected]
        assert [doc.metadata["relevance_score"] for doc in docs] == pytest.approx([r.score for r in expected])
        assert docs[0].metadata["embedkit"] == candidates[expected[0].index].metadata["embedkit"]  # kept as it was


def test_embedkit_rerank_options_and_errors(cross_encoder_dir: str, reranker) -> None:
    docs = [Document(page_content=text, metadata={"n": i}) for i, text in enumerate(["bees", "hives", "git", "tcp"])]
    everything = EmbedkitRerank(model=cross_encoder_dir, top_n=None).compress_documents(docs, QUERY)
    expected = reranker.rerank(QUERY, [doc.page_content for doc in docs])
    assert [doc.metadata["n"] for doc in everything] == [r.index for r in expected]
    assert EmbedkitRerank(reranker=reranker).compress_documents([], QUERY) == []
    # pydantic wraps the InputError raised while validating into its ValidationError (a ValueError too)
    with pytest.raises(ValueError, match="one of model, url or reranker"):
        EmbedkitRerank()
    with pytest.raises(ValueError, match="one of model, url or reranker"):
        EmbedkitRerank(model=cross_encoder_dir, reranker=reranker)
    with pytest.raises(ValueError, match="top_n"):
        EmbedkitRerank(reranker=reranker, top_n=0)
    with pytest.raises(ValueError, match="reranker must be"):
        EmbedkitRerank(reranker=object())
