"""Strict types at both boundaries: the server refuses `"dimensions": "8"`, `8.0` and `"normalize": "yes"`
(422 in TEI's shape, naming the field), and Python refuses `normalize="no"` (truthy!) and friends with an
InputError in the local embedder and both TEI clients, before any work or request."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from embedkit import AsyncTEIClient, InputError, TEIClient

from .conftest import API_KEY, RunningServer, assert_tei_error, post


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/embed", {"inputs": "x", "dimensions": "8"}, "dimensions: Input should be a valid integer"),
        ("/embed", {"inputs": "x", "dimensions": 8.0}, "dimensions: Input should be a valid integer"),
        ("/embed", {"inputs": "x", "normalize": "yes"}, "normalize: Input should be a valid boolean"),
        ("/embed", {"inputs": "x", "normalize": 1}, "normalize: Input should be a valid boolean"),
        ("/embed", {"inputs": "x", "truncate": "false"}, "truncate: Input should be a valid boolean"),
        ("/embed", {"inputs": "x", "prompt_name": 5}, "prompt_name: Input should be a valid string"),
        ("/embed", {"inputs": [101.0, 102]}, "inputs"),
        ("/embed", {"inputs": [[101, True]]}, "inputs"),
        (
            "/tokenize",
            {"inputs": "x", "add_special_tokens": "no"},
            "add_special_tokens: Input should be a valid boolean",
        ),
        ("/tokenize", {"inputs": [101, 102]}, "inputs"),  # TEI's /tokenize takes texts only
        ("/v1/embeddings", {"input": "x", "dimensions": "8"}, "dimensions: Input should be a valid integer"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "Float"}, "encoding_format"),
    ],
)
def test_the_server_refuses_lax_types_naming_the_field(
    server: RunningServer, path: str, body: dict, field: str
) -> None:
    message = assert_tei_error(post(server, path, body), 422, "Validation")
    assert message.startswith("Failed to deserialize the JSON body into the target type: ") and field in message


def test_the_strict_forms_are_accepted(server: RunningServer, minilm) -> None:
    response = post(server, "/embed", {"inputs": "x", "dimensions": 8, "normalize": False, "truncate": None})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json(), minilm.embed(["x"], dimensions=8, normalize=False), atol=1e-5)


LAX = [
    ({"normalize": "no"}, "normalize must be True or False, got str 'no'"),
    ({"normalize": 0}, "normalize must be True or False, got int 0"),
    ({"normalize": np.bool_(True)}, "normalize must be True or False, got bool"),
    ({"truncate": "yes"}, "truncate must be True or False, got str 'yes'"),
    ({"truncate": None}, "truncate must be True or False, got NoneType"),
    ({"dimensions": "8"}, "dimensions must be an int or None, got str '8'"),
    ({"dimensions": 8.0}, "dimensions must be an int or None, got float 8.0"),
    ({"dimensions": True}, "dimensions must be an int or None, got bool True"),
]


@pytest.mark.parametrize(("kwargs", "message"), LAX)
def test_the_local_embedder_refuses_lax_types(minilm, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        minilm.embed(["x"], **kwargs)
    with pytest.raises(InputError, match=message):
        minilm.embed_ids([[101, 102]], **kwargs)
    if "truncate" not in kwargs:
        with pytest.raises(InputError, match=message):
            minilm.embed_spans("a text to read", [(0, 1)], task=None, **kwargs)
    if "normalize" in kwargs:
        with pytest.raises(InputError, match=message):
            minilm.embed_query("x", **kwargs)


class _Recording(httpx.HTTPTransport):
    """The real transport, noting each request's path."""

    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self.seen = seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.url.path)
        return super().handle_request(request)


class _AsyncRecording(httpx.AsyncHTTPTransport):
    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self.seen = seen

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.url.path)
        return await super().handle_async_request(request)


@pytest.mark.parametrize(("kwargs", "message"), LAX)
def test_the_tei_clients_refuse_lax_types_before_any_request(server: RunningServer, kwargs: dict, message: str) -> None:
    seen: list[str] = []
    with TEIClient(server.url, api_key=API_KEY, transport=_Recording(seen)) as client:
        with pytest.raises(InputError, match=message):
            client.embed(["x"], **kwargs)
        assert seen == []
        client.embed(["x"])  # the transport does reach the server
        assert "/embed" in seen

    async def run() -> None:
        async with AsyncTEIClient(server.url, api_key=API_KEY, transport=_AsyncRecording(seen)) as client:
            with pytest.raises(InputError, match=message):
                await client.embed(["x"], **kwargs)

    seen.clear()
    asyncio.run(run())
    assert seen == []
