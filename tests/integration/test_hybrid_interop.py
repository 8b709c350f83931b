"""A hybrid collection embedkit writes is read as it is by the frameworks users pair with Qdrant:
langchain-qdrant's QdrantVectorStore in HYBRID and SPARSE mode with fastembed's Qdrant/bm25 (run offline from
a local stopword file), and LlamaIndex's QdrantVectorStore with hybrid on and LlamaIndex's vector names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from embedkit.ingestion import ingest, load_directory
from embedkit.sinks import QdrantSink
from embedkit.sinks.qdrant import VECTOR_NAME_PRESETS
from embedkit.sparse import BM25Encoder

STOPWORDS = Path(__file__).resolve().parents[1] / "sparse" / "data" / "english_stopwords.txt"
QUERIES = ["how do I reset my password", "why do bees shiver in winter", "compost heap temperature", "git rebase"]


@pytest.fixture(scope="module")
def fastembed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qdrant/bm25 as fastembed reads it from disk (its Bm25 opens only the language's stopword file)."""
    folder = tmp_path_factory.mktemp("qdrant-bm25")
    shutil.copy(STOPWORDS, folder / "english.txt")
    return folder


def written(path: Path, preset: str, minilm, example_docs: Path) -> QdrantSink:
    dense, sparse = VECTOR_NAME_PRESETS[preset]
    sink = QdrantSink("kb", path=path, engine="client-local", vector_name=dense, sparse_vector_name=sparse)
    ingest(load_directory(example_docs, source="docs"), minilm, sink, progress=False, sparse=BM25Encoder())
    return sink


def test_langchain_qdrant_reads_the_hybrid_collection(tmp_path: Path, minilm, example_docs: Path, fastembed_folder):
    from langchain_qdrant import FastEmbedSparse, QdrantVectorStore, RetrievalMode

    from langchain_embedkit import EmbedkitEmbeddings

    with written(tmp_path / "q", "langchain", minilm, example_docs) as sink:
        sparse = FastEmbedSparse(
            model_name="Qdrant/bm25",
            specific_model_path=str(fastembed_folder),
            local_files_only=True,
            cache_dir=str(fastembed_folder),
        )
        options = {
            "client": sink.client,
            "collection_name": "kb",
            "embedding": EmbedkitEmbeddings(embedder=minilm),
            "sparse_embedding": sparse,
            "content_payload_key": "page_content",
            "metadata_payload_key": "metadata",
        }
        theirs_hybrid = QdrantVectorStore(retrieval_mode=RetrievalMode.HYBRID, **options)
        theirs_sparse = QdrantVectorStore(retrieval_mode=RetrievalMode.SPARSE, **options)
        bm25 = BM25Encoder()
        for query in QUERIES:
            # langchain-qdrant prefetches k per branch and fuses with Qdrant's default RRF: the same search here
            ours = sink.search(minilm.embed_query(query), 5, sparse_vector=bm25.embed_query(query), fetch_k=5, rrf_k=2)
            found = theirs_hybrid.similarity_search_with_score(query, k=5)
            assert [doc.metadata["_id"] for doc, _ in found] == [hit.id for hit in ours], query
            sparse_only = sink.search(None, 5, sparse_vector=bm25.embed_query(query))
            found = theirs_sparse.similarity_search_with_score(query, k=5)
            assert [doc.metadata["_id"] for doc, _ in found] == [hit.id for hit in sparse_only], query
            assert [score for _, score in found] == pytest.approx([hit.score for hit in sparse_only], rel=1e-5)


def test_llamaindex_reads_the_hybrid_collection(tmp_path: Path, minilm, example_docs: Path) -> None:
    pytest.importorskip("llama_index.vector_stores.qdrant")
    from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    bm25 = BM25Encoder()

    def sparse_query(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
        vectors = [bm25.embed_query(text) for text in texts]
        return [v.indices for v in vectors], [v.values for v in vectors]

    def sparse_documents(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
        vectors = bm25.embed_documents(texts)
        return [v.indices for v in vectors], [v.values for v in vectors]

    with written(tmp_path / "q", "llamaindex", minilm, example_docs) as sink:
        store = QdrantVectorStore(
            collection_name="kb",
            client=sink.client,
            enable_hybrid=True,
            sparse_query_fn=sparse_query,
            sparse_doc_fn=sparse_documents,  # else it loads its default SPLADE model from the hub
            text_key="page_content",
        )
        for query in QUERIES:
            request = VectorStoreQuery(
                query_embedding=minilm.embed_query(query).tolist(),
                query_str=query,
                similarity_top_k=5,
                sparse_top_k=5,
                mode=VectorStoreQueryMode.HYBRID,
            )
            result = store.query(request)
            texts = {hit.payload["page_content"] for hit in sink.search(None, 5, sparse_vector=bm25.embed_query(query))}
            texts |= {hit.payload["page_content"] for hit in sink.search(minilm.embed_query(query), 5)}
            assert result.nodes and {node.get_content() for node in result.nodes} <= texts, query
            sparse_result = store.query(
                VectorStoreQuery(query_str=query, sparse_top_k=5, similarity_top_k=5, mode=VectorStoreQueryMode.SPARSE)
            )
            ours = [hit.payload["page_content"] for hit in sink.search(None, 5, sparse_vector=bm25.embed_query(query))]
            assert [node.get_content() for node in sparse_result.nodes] == ours, query
