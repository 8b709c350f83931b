"""langchain-tests' embeddings suite on a local and a remote embedkit embedder, and their parity."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from langchain_embedkit import EmbedkitEmbeddings

from .conftest import API_KEY


class TestLocalEmbeddings(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[EmbedkitEmbeddings]:
        return EmbedkitEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"device": "cpu"}


class TestRemoteEmbeddings(EmbeddingsIntegrationTests):
    url: str = ""

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _server(cls, server_url: str) -> None:
        cls.url = server_url

    @property
    def embeddings_class(self) -> type[EmbedkitEmbeddings]:
        return EmbedkitEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"tei_url": self.url, "api_key": API_KEY}


TEXTS = ["how do I reset my password", "Qdrant stores vectors", "ünïcödé 日本語"]


def test_remote_and_local_give_the_same_vectors(server_url: str, local_embedder) -> None:
    local = EmbedkitEmbeddings(embedder=local_embedder)
    remote = EmbedkitEmbeddings(tei_url=server_url, api_key=API_KEY)
    np.testing.assert_allclose(remote.embed_documents(TEXTS), local.embed_documents(TEXTS), atol=1e-5)
    np.testing.assert_allclose(remote.embed_query(TEXTS[0]), local.embed_query(TEXTS[0]), atol=1e-5)
    documents, query = asyncio.run(_both(remote))
    np.testing.assert_allclose(documents, local.embed_documents(TEXTS), atol=1e-5)
    np.testing.assert_allclose(query, local.embed_query(TEXTS[0]), atol=1e-5)
    assert all(type(x) is float for x in query)


async def _both(embeddings: EmbedkitEmbeddings) -> tuple[list[list[float]], list[float]]:
    return await embeddings.aembed_documents(TEXTS), await embeddings.aembed_query(TEXTS[0])


def test_dimensions_and_tasks_pass_through(local_embedder) -> None:
    embeddings = EmbedkitEmbeddings(embedder=local_embedder, dimensions=128)
    vector = embeddings.embed_query("x")
    assert len(vector) == 128
    np.testing.assert_allclose(vector, local_embedder.embed_query("x", dimensions=128), atol=1e-6)
