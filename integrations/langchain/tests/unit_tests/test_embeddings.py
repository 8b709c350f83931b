"""EmbedkitEmbeddings without a network: langchain-tests' unit suite plus argument checks."""

from __future__ import annotations

import pytest
from langchain_tests.unit_tests import EmbeddingsUnitTests

from embedkit import TEIClient
from embedkit.remote import wire
from langchain_embedkit import EmbedkitEmbeddings


class TestEmbedkitEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[EmbedkitEmbeddings]:
        return EmbedkitEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {}  # the packaged default model, loaded from disk

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        # a TEI client connects lazily, so building one touches no network
        return (
            {"EMBEDKIT_API_KEY": "env-key-123"},
            {"tei_url": "http://127.0.0.1:9"},
            {"api_key": "env-key-123", "tei_url": "http://127.0.0.1:9"},
        )


# pydantic wraps the InputError raised while validating into its ValidationError (a ValueError too)
def test_one_source_only() -> None:
    with pytest.raises(ValueError, match="one of embedder, model or tei_url"):
        EmbedkitEmbeddings(model="x", tei_url="http://127.0.0.1:9")


def test_embedder_must_be_an_embedkit_embedder() -> None:
    with pytest.raises(ValueError, match="embedkit embedder"):
        EmbedkitEmbeddings(embedder=object())


def test_remote_key_is_secret_and_reaches_the_client() -> None:
    embeddings = EmbedkitEmbeddings(tei_url="http://127.0.0.1:9", api_key="sk-abc-987")
    assert isinstance(embeddings.embedder, TEIClient)
    assert "sk-abc-987" not in repr(embeddings) and "sk-abc-987" not in repr(embeddings.embedder)
    settings = embeddings.embedder.settings
    assert "sk-abc-987" not in repr(settings)
    # what the client sends, as built from its settings
    assert wire.get_request(settings, "/info").headers["Authorization"] == "Bearer sk-abc-987"


def test_empty_documents_give_an_empty_list() -> None:
    embeddings = EmbedkitEmbeddings(tei_url="http://127.0.0.1:9")
    assert embeddings.embed_documents([]) == []
