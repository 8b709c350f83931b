"""Building things around a remote client sends nothing: wrappers, chunkers, twins, a retriever's embeddings.

A request made while constructing turns a server that is down into a constructor that retries for seconds and
raises. The usual cause is `isinstance(x, SomeRuntimeProtocol)` on a Protocol with properties: Python evaluates
each property to check it exists, and a TEIClient's `dimension` or `max_input_tokens` asks the server. Each
construction here goes through an httpx.MockTransport that records every request, and must record none.
"""

from __future__ import annotations

import ast
import socket
from pathlib import Path

import httpx
import pytest
from qdrant_client import QdrantClient
from tokenizers import Tokenizer

from embedkit import AsyncTEIClient, InputError, TEIClient
from embedkit.chunking import Chunker, default_chunker
from embedkit.remote import RetryPolicy
from embedkit.sinks import QdrantSink
from langchain_embedkit import EmbedkitEmbeddings, EmbedkitRetriever

REPO = Path(__file__).resolve().parents[2]
URL = "http://embedding-server.invalid:8080"


class Recorder:
    """Transports that answer nothing and remember every request they were asked to send."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        return httpx.Response(503)

    def sync(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def asynchronous(self) -> httpx.MockTransport:
        async def handle(request: httpx.Request) -> httpx.Response:
            return self._handle(request)

        return httpx.MockTransport(handle)


@pytest.fixture()
def recorder() -> Recorder:
    return Recorder()


def dead_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_wrappers_and_chunkers_send_nothing(recorder: Recorder, minilm_dir: Path) -> None:
    client = TEIClient(URL, api_key="k", transport=recorder.sync())
    EmbedkitEmbeddings(embedder=client)
    Chunker(client)
    Chunker(client, 64, overlap_tokens=8, task="query")
    default_chunker(client)
    default_chunker(client, max_tokens=100)
    default_chunker(client, tokenizer=minilm_dir)  # a model folder
    default_chunker(client, str(minilm_dir / "tokenizer.json"))  # the file, as the CLI's --tokenizer passes it
    Chunker(client, tokenizer=Tokenizer.from_file(str(minilm_dir / "tokenizer.json")))
    AsyncTEIClient.from_client(client)
    twin = AsyncTEIClient.from_client(client, transport=recorder.asynchronous())
    TEIClient.from_client(twin)
    EmbedkitEmbeddings(embedder=twin)  # an async client: its sync twin is made, and sends nothing either
    assert recorder.requests == []


def test_a_retrievers_embeddings_send_nothing(recorder: Recorder) -> None:
    qdrant = QdrantClient(location=":memory:")
    QdrantSink("kb", client=qdrant).prepare(4, {"model_id": "remote"})
    embeddings = EmbedkitEmbeddings(embedder=TEIClient(URL, transport=recorder.sync()))
    with EmbedkitRetriever(collection="kb", client=qdrant, embeddings=embeddings, k=2):
        pass
    assert recorder.requests == []
    qdrant.close()


def test_construction_against_a_dead_port_neither_waits_nor_raises() -> None:
    # before: four attempts with backoff on /info and a probe /embed, then RemoteError from the constructor
    url = f"http://127.0.0.1:{dead_port()}"
    slow = RetryPolicy(attempts=4, backoff=5.0)
    client = TEIClient(url, retry=slow)
    EmbedkitEmbeddings(embedder=client)
    EmbedkitEmbeddings(tei_url=url)
    default_chunker(client)
    EmbedkitEmbeddings(embedder=AsyncTEIClient(url, retry=slow))


def test_a_service_without_tokenize_is_told_to_give_a_tokenizer_before_any_request(recorder: Recorder) -> None:
    client = TEIClient(URL, api="openai", model="m", transport=recorder.sync())
    for build in (lambda: Chunker(client), lambda: default_chunker(client)):
        with pytest.raises(InputError, match=r"tokenizer=.*--tokenizer PATH") as refused:
            build()
        assert "no /tokenize" in str(refused.value)
    with pytest.raises(InputError, match="--tokenizer PATH"):
        client.tokenize(["x"])
    assert recorder.requests == []


def test_tokenizer_arguments_are_checked(recorder: Recorder, minilm_dir: Path, tmp_path: Path) -> None:
    client = TEIClient(URL, transport=recorder.sync())
    with pytest.raises(InputError, match="does not exist"):
        default_chunker(client, tokenizer=tmp_path / "missing.json")
    with pytest.raises(InputError, match=r"holds no tokenizer.json"):
        default_chunker(client, tokenizer=tmp_path)
    with pytest.raises(InputError, match="tokenizer must be"):
        default_chunker(client, tokenizer=42)
    tokenizer = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    with pytest.raises(InputError, match="give the tokenizer once"):
        Chunker(tokenizer, 32, tokenizer=tokenizer)
    with pytest.raises(InputError, match="needs an embedkit embedder"):
        Chunker(object(), 32, tokenizer=tokenizer)
    (tmp_path / "tokenizer.json").write_text("{not json")
    from embedkit.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"tokenizer.json"):
        default_chunker(client, tokenizer=tmp_path)
    assert recorder.requests == []


def _runtime_protocols_with_properties(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        decorators = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in node.decorator_list}
        has_property = any(
            isinstance(item, ast.FunctionDef)
            and any(isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list)
            for item in node.body
        )
        if "runtime_checkable" in decorators and has_property:
            names.add(node.name)
    return names


def test_no_isinstance_against_a_runtime_protocol_with_properties() -> None:
    """The class of fault, not one instance: no such check anywhere in embedkit or langchain_embedkit."""
    files = [
        *(REPO / "embedkit").rglob("*.py"),
        *(REPO / "integrations" / "langchain" / "langchain_embedkit").rglob("*.py"),
    ]
    trees = {path: ast.parse(path.read_text(), str(path)) for path in files}
    protocols = set().union(*(_runtime_protocols_with_properties(tree) for tree in trees.values()))
    assert {"Embedder", "TokenCounter"} <= protocols  # the scan sees them, so an empty result below means something
    found = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
                kinds = node.args[1:2]
                named = {
                    n.id if isinstance(n, ast.Name) else getattr(n, "attr", None) for k in kinds for n in ast.walk(k)
                }
                if named & protocols:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == []
