"""LangChain integration for embedkit: Embeddings, a Qdrant retriever, a reranking compressor and a QdrantVectorStore
helper."""

from langchain_embedkit.embeddings import EmbedkitEmbeddings
from langchain_embedkit.rerank import EmbedkitRerank
from langchain_embedkit.retrievers import EmbedkitRetriever
from langchain_embedkit.vectorstores import qdrant_vector_store

__all__ = ["EmbedkitEmbeddings", "EmbedkitRerank", "EmbedkitRetriever", "qdrant_vector_store"]
