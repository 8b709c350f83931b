"""EmbedkitRetriever closes its Qdrant client: `close()`, `with`, and a quiet exit for scripts that never close.

No network and no model: the collection is made by QdrantSink.prepare and queries are embedded by a
fixed stand-in. Scripts run in a subprocess, since qdrant-client's 'Exception ignored in
QdrantClient.__del__' only appears at interpreter exit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from embedkit import StoreError
from embedkit.sinks import Point, QdrantSink
from langchain_embedkit import EmbedkitEmbeddings, EmbedkitRetriever

# an embedkit Embedder that needs neither a model nor a network: every text is the same 4-d vector
FIXED = """
import numpy as np


class Fixed:
    model_id = "fixed"
    dimension = 4
    max_input_tokens = 512
    tasks = []

    def embed(self, texts, *, task=None, dimensions=None, normalize=True, truncate=True):
        return np.tile(np.array([0.5, 0.5, 0.5, 0.5], dtype=np.float32), (len(texts), 1))

    def embed_query(self, text, *, dimensions=None, normalize=True):
        return self.embed([text])[0]

    def embed_documents(self, texts, *, dimensions=None, normalize=True):
        return self.embed(texts)
"""
_namespace: dict = {}
exec(FIXED, _namespace)  # the very class the scripts below define
Fixed = _namespace["Fixed"]


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    with QdrantSink("kb", path=tmp_path / "q") as sink:
        sink.prepare(4, {"model_id": "fixed"})
        sink.upsert([Point(str(uuid.UUID(int=1)), [1, 1, 1, 1], {"page_content": "hi"})])
    return tmp_path / "q"


def run_script(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = FIXED + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_quiet(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def opens_in_another_process(path: Path) -> bool:
    code = f"from embedkit.sinks import QdrantSink; QdrantSink('kb', path={str(path)!r}).count()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0


def test_script_that_never_closes_exits_quietly(store: Path) -> None:
    result = run_script(
        f"""
        from langchain_embedkit import EmbedkitEmbeddings, EmbedkitRetriever
        embeddings = EmbedkitEmbeddings(embedder=Fixed())
        retriever = EmbedkitRetriever(collection="kb", path={str(store)!r}, embeddings=embeddings)
        print(retriever.invoke("hello")[0].page_content)
        """,
        store.parent,
    )
    assert_quiet(result)
    assert result.stdout.strip() == "hi"


def test_script_with_context_manager_exits_quietly(store: Path) -> None:
    result = run_script(
        f"""
        from langchain_embedkit import EmbedkitEmbeddings, EmbedkitRetriever
        embeddings = EmbedkitEmbeddings(embedder=Fixed())
        with EmbedkitRetriever(collection="kb", path={str(store)!r}, embeddings=embeddings) as retriever:
            print(retriever.invoke("hello")[0].page_content)
        retriever.close()  # again: nothing to do
        """,
        store.parent,
    )
    assert_quiet(result)
    assert result.stdout.strip() == "hi"


def test_close_frees_the_path_and_later_searches_say_closed(store: Path) -> None:
    with EmbedkitRetriever(
        collection="kb", path=str(store), embeddings=EmbedkitEmbeddings(embedder=Fixed())
    ) as retriever:
        assert [doc.page_content for doc in retriever.invoke("hello")] == ["hi"]
    assert opens_in_another_process(store)
    with pytest.raises(StoreError, match="is closed"):
        retriever.invoke("hello")


def test_a_given_client_stays_open() -> None:
    client = QdrantClient(location=":memory:")
    QdrantSink("kb", client=client).prepare(4, {"model_id": "fixed"})
    with EmbedkitRetriever(collection="kb", client=client, embeddings=EmbedkitEmbeddings(embedder=Fixed())):
        pass
    assert client.collection_exists("kb")
    client.close()
