"""A request's path through the app, in process: tokenised once, batched within the batcher's own budget.

The embedder is wrapped so that every call the server makes on it is recorded; nothing here reaches
into the server's or the embedder's private names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

import embedkit
from embedkit.server import ServerSettings, create_app

TEXTS = ["a short one", "a somewhat longer text about rivers and the sea", "mid length text here"]


class Recording:
    """The embedder, with each call of the methods that tokenise or run the model recorded."""

    watched = ("encode", "tokenize", "count_tokens", "embed", "embed_ids", "token_batch", "embed_token_batch")

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any], Any]] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.embedder, name)
        if name not in self.watched:
            return value

        def record(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            self.calls.append((name, args, kwargs, result))
            return result

        return record

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("embedder", "calls"):
            object.__setattr__(self, name, value)
        else:  # the server must not change the embedder
            raise AssertionError(f"the server set embedder.{name} = {value!r}")

    def named(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any], Any]]:
        return [(args, kwargs, result) for called, args, kwargs, result in self.calls if called == name]


@pytest.fixture(scope="module")
def embedder() -> Any:
    return embedkit.load(device="cpu")


@pytest.fixture()
def recording(embedder: Any) -> Recording:
    return Recording(embedder)


@contextlib.contextmanager
def client_for(recording: Recording, **settings: Any) -> Iterator[TestClient]:
    with TestClient(create_app(recording, ServerSettings(**settings))) as client:  # type: ignore[arg-type]
        yield client


@pytest.mark.parametrize("path", ["/embed", "/v1/embeddings"])
def test_each_request_is_tokenised_once_and_the_model_runs_those_ids(recording: Recording, path: str) -> None:
    with client_for(recording) as client:
        body = {"inputs": TEXTS} if path == "/embed" else {"input": TEXTS}
        response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    # one tokenisation; the batcher builds one TokenBatch of those very ids and runs it
    assert [name for name, *_ in recording.calls] == ["encode", "token_batch", "embed_token_batch"]
    ((encoded_args, _, ids),) = recording.named("encode")
    assert encoded_args[0] == TEXTS
    ((batch_args, _, _),) = recording.named("token_batch")
    assert batch_args[0] == ids
    ((run_args, _, _),) = recording.named("embed_token_batch")
    assert sorted(map(tuple, run_args[0].rows())) == sorted(map(tuple, ids))  # the same ids, longest first


def test_tokenize_tokenises_once(recording: Recording) -> None:
    with client_for(recording) as client:
        response = client.post("/tokenize", json={"inputs": TEXTS})
    assert response.status_code == 200, response.text
    assert [name for name, *_ in recording.calls] == ["tokenize"]


def test_the_batcher_packs_within_its_own_budget_and_leaves_the_embedder_alone(
    recording: Recording, embedder: Any
) -> None:
    budget_before = embedder.batch_tokens
    texts = [f"text number {i} " + "word " * (i % 7) for i in range(24)]
    with client_for(recording, max_batch_tokens=64) as client:
        response = client.post("/embed", json={"inputs": texts[:16]})
        info = client.get("/info").json()
    assert response.status_code == 200, response.text
    assert info["max_batch_tokens"] == 64
    assert embedder.batch_tokens == budget_before  # the server never overwrote the embedder's budget
    runs = recording.named("embed_token_batch")
    assert len(runs) > 1
    for args, _, _ in runs:
        batch = args[0]
        assert batch.size * batch.max_length <= 64 or batch.size == 1  # padded tokens per forward call
    expected = embedder.embed(texts[:16], normalize=True)
    np.testing.assert_allclose(np.asarray(response.json()), expected, atol=1e-5)
