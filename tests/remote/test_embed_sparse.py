"""The clients' embed_sparse over httpx's MockTransport: TEI's /embed_sparse wire format, batching by the
server's size, a batch refused for its size resent in parts, and answers that are not TEI's shape refused.
(A real `embedkit serve` answers it in tests/server/test_embed_sparse.py.)"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from embedkit import AsyncTEIClient, InputError, RemoteError, TEIClient
from embedkit.sparse import SparseVector

INFO = {
    "model_id": "splade",
    "max_client_batch_size": 4,
    "max_input_length": 512,
    "model_type": {"embedding": {"pooling": "splade"}},
}


def server(seen: list[dict], *, refuse_over: int | None = None, answer=None):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(200, json=INFO)
        assert request.url.path == "/embed_sparse"
        body = json.loads(request.read())
        seen.append(body)
        if refuse_over is not None and len(body["inputs"]) > refuse_over:
            return httpx.Response(413, json={"error": "payload too large", "error_type": "PayloadTooLarge"})
        if answer is not None:
            return httpx.Response(200, json=answer)
        # text i -> {len(text): 1.0, 7: 0.5}, listed in descending index order (the client sorts)
        return httpx.Response(
            200, json=[[{"index": len(text) + 10, "value": 1.0}, {"index": 7, "value": 0.5}] for text in body["inputs"]]
        )

    return httpx.MockTransport(handler)


def expected(texts: list[str]) -> list[SparseVector]:
    return [SparseVector([7, len(text) + 10], [0.5, 1.0]) for text in texts]


def test_wire_format_and_batches() -> None:
    seen: list[dict] = []
    texts = [f"text {'x' * i}" for i in range(10)]
    with TEIClient("http://tei", transport=server(seen)) as client:
        assert client.embed_sparse(texts, prompt_name="query", truncate=False) == expected(texts)
    assert [len(body["inputs"]) for body in seen] == [4, 4, 2]
    assert seen[0] == {"inputs": texts[:4], "truncate": False, "truncation_direction": "Right", "prompt_name": "query"}


def test_a_refused_batch_is_split_and_async_matches() -> None:
    seen: list[dict] = []
    texts = ["a", "bb", "ccc", "dddd"]
    with TEIClient("http://tei", transport=server(seen, refuse_over=1)) as client:
        assert client.embed_sparse(texts) == expected(texts)
    assert [len(body["inputs"]) for body in seen] == [4, 2, 1, 1, 2, 1, 1]

    async def run() -> list[SparseVector]:
        async with AsyncTEIClient("http://tei", transport=server([])) as client:
            return await client.embed_sparse(texts)

    assert asyncio.run(run()) == expected(texts)


@pytest.mark.parametrize(
    "answer",
    [
        [[{"index": 1, "value": 1.0}]],  # one vector for two texts
        [[{"index": -1, "value": 1.0}], []],
        [[{"index": 1, "value": "high"}], []],
        [[{"index": 1, "value": 1.0}, {"index": 1, "value": 2.0}], []],
        {"error": "not a list"},
    ],
    ids=["count", "negative-index", "value-type", "repeated-index", "object"],
)
def test_answers_not_in_tei_shape_are_remote_errors(answer: object) -> None:
    with TEIClient("http://tei", transport=server([], answer=answer)) as client:
        with pytest.raises(RemoteError, match="sparse vector"):
            client.embed_sparse(["a", "b"])


def test_bad_arguments_before_any_request() -> None:
    seen: list[dict] = []
    with TEIClient("http://tei", transport=server(seen)) as client:
        with pytest.raises(InputError, match="texts is empty"):
            client.embed_sparse([])
        with pytest.raises(InputError, match="truncation_direction"):
            client.embed_sparse(["a"], truncation_direction="up")
    with TEIClient("http://tei", api="openai", model="m", transport=server(seen)) as client:
        with pytest.raises(InputError, match="/embed_sparse"):
            client.embed_sparse(["a"])
    assert seen == []
