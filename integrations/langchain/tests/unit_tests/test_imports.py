from langchain_embedkit import __all__

EXPECTED_ALL = ["EmbedkitEmbeddings", "EmbedkitRerank", "EmbedkitRetriever", "qdrant_vector_store"]


def test_all_imports() -> None:
    assert sorted(EXPECTED_ALL) == sorted(__all__)
