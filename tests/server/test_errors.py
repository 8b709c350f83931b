"""Every error answers in TEI's shape from the server's one error -> status table: the framework's own
refusals (404, 405, bodies that are not JSON or nest too deep) included, and a client's bad input is a
422, never a backend failure, wherever it is found."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from embedkit import InputError
from embedkit.server.batching import DynamicBatcher

from .conftest import API_KEY, RunningServer, assert_tei_error, post

AUTH = {"Authorization": f"Bearer {API_KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "content", "headers", "status", "error_type"),
    [
        ("GET", "/no-such-route", None, AUTH, 404, "NotFound"),
        ("POST", "/v2/embeddings", b"{}", JSON, 404, "NotFound"),
        ("GET", "/embed", None, AUTH, 405, "MethodNotAllowed"),
        ("DELETE", "/info", None, AUTH, 405, "MethodNotAllowed"),
        ("GET", "/v1/embeddings", None, AUTH, 405, "MethodNotAllowed"),  # the OpenAI shape on its route
        ("POST", "/embed", b'{"inputs": ["x"', JSON, 400, "BadRequest"),
        ("POST", "/embed", b"not json at all", JSON, 400, "BadRequest"),
        ("POST", "/v1/embeddings", b'{"input": ', JSON, 400, "BadRequest"),
        ("POST", "/embed", b'{"inputs": "\xff\xfe"}', JSON, 400, "BadRequest"),  # not UTF-8
        ("POST", "/embed", b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON, 400, "BadRequest"),
        ("POST", "/embed", b'{"inputs": ' + b"[" * 50 + b"]" * 50 + b"}", JSON, 422, "Validation"),
        ("POST", "/tokenize", b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON, 400, "BadRequest"),
        ("POST", "/embed", b'{"inputs": "x"}', {**AUTH, "Content-Type": "text/plain"}, 415, "UnsupportedMediaType"),
        ("POST", "/embed", b'{"inputs": "x"}', {"Authorization": "Bearer wrong"}, 401, "Unauthorized"),
        ("POST", "/v1/embeddings", b'{"input": "x"}', {}, 401, "Unauthorized"),
        ("POST", "/embed", b'{"inputs": "' + b"x" * 2_000_000 + b'"}', JSON, 413, "PayloadTooLarge"),
    ],
)
def test_framework_refusals_answer_in_tei_shape(
    server: RunningServer,
    method: str,
    path: str,
    content: bytes | None,
    headers: dict[str, str],
    status: int,
    error_type: str,
) -> None:
    response = httpx.request(method, f"{server.url}{path}", content=content, headers=headers, timeout=60)
    assert_tei_error(response, status, error_type)
    assert "detail" not in response.json()
    if status == 405:
        assert response.headers["allow"]


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/embed", {"inputs": "\ud800"}, "inputs[0]"),
        ("/embed", {"inputs": ["fine", "half an emoji \udfff"]}, "inputs[1]"),
        ("/embed", {"inputs": "\ud800", "truncate": False}, "inputs[0]"),
        ("/v1/embeddings", {"input": "\ud800"}, "inputs[0]"),
        ("/v1/embeddings", {"input": ["fine", "\udc80x"]}, "inputs[1]"),
        ("/tokenize", {"inputs": "\ud800"}, "inputs[0]"),
        ("/tokenize", {"inputs": ["fine", "a\ud83db"]}, "inputs[1]"),
    ],
)
def test_lone_surrogates_are_the_clients_error(server: RunningServer, path: str, body: dict, where: str) -> None:
    before = server.log()
    message = assert_tei_error(post(server, path, body), 422, "Validation")
    assert message.startswith(f"Input validation error: {where} cannot be encoded as UTF-8: lone surrogate")
    logged = server.log()[len(before) :]
    assert "Traceback" not in logged and "failed" not in logged, logged
    field = "input" if path == "/v1/embeddings" else "inputs"
    assert post(server, path, {**body, field: "fine"}).status_code == 200  # and it keeps serving


def test_no_crash_was_logged_and_no_backend_failure_counted(server: RunningServer) -> None:
    post(server, "/embed", {"inputs": ["\ud800"]})
    post(server, "/embed", {"inputs": [[101, 99999, 102]]})
    assert "Traceback" not in server.log()
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'te_request_failure{err="backend"}' not in metrics
    assert 'te_request_failure{err="validation"}' in metrics


async def test_a_request_that_fails_in_a_shared_forward_pass_fails_alone(minilm) -> None:
    batches: list[int] = []
    batcher = DynamicBatcher(minilm, max_batch_tokens=16384, on_batch=lambda n, tokens, s: batches.append(n))
    batcher.start()
    good = minilm.encode(["a fine text", "another one"])
    bad = [[101] * 300]  # past all-MiniLM's 256 positions: the model call refuses it with an InputError
    try:
        results = await asyncio.gather(
            batcher.embed(good, task=None), batcher.embed(bad, task=None), batcher.embed(good[:1], task=None),
            return_exceptions=True,
        )  # fmt: skip
    finally:
        await batcher.close()
    assert isinstance(results[1], InputError) and "over this model's limit of 256" in str(results[1])
    expected = minilm.embed(["a fine text", "another one"], normalize=False)
    np.testing.assert_allclose(results[0], expected, atol=1e-5)
    np.testing.assert_allclose(results[2], expected[:1], atol=1e-5)
    assert batches == [2, 1]  # the shared pass failed, then each request ran alone


def test_openapi_error_responses_document_the_shapes(server: RunningServer) -> None:
    schema = httpx.get(f"{server.url}/openapi.json").json()
    embed = schema["paths"]["/embed"]["post"]["responses"]
    openai = schema["paths"]["/v1/embeddings"]["post"]["responses"]
    for status in ("400", "401", "413", "422", "424", "429"):
        assert embed[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
        assert openai[status]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIErrorResponse")
    assert json.dumps(schema)  # serialisable as served
