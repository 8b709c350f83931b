"""Token-id inputs on the wire: TEI's `"inputs": [[101, 7592, 102], ...]` and OpenAI's token-array `input`.

Against the scripted TEI server on 127.0.0.1 (it records each body) and, for the OpenAI route, an
httpx.MockTransport. tests/server/test_client_twins.py checks the vectors against a real `embedkit serve`.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from embedkit import AsyncTEIClient, InputError, TEIClient
from embedkit.remote import RetryPolicy

from .conftest import Answer, ScriptedServer, vector_of

FAST = RetryPolicy(backoff=0.01, max_backoff=0.05)


def answer_ids(path: str, body: dict, n: int) -> Answer:
    """A text's vector as in conftest; a token-id list's is [first id, number of ids, 1]."""
    rows = [[float(x[0]), float(len(x)), 1.0] if isinstance(x, list) else vector_of(x) for x in body["inputs"]]
    return Answer(body=rows)


def unit(rows: list[list[float]]) -> np.ndarray:
    raw = np.array(rows, dtype=np.float32)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def test_token_ids_are_sent_as_id_lists_and_come_back_in_order(scripted: ScriptedServer) -> None:
    scripted.behaviour = answer_ids
    ids = [[101, 7592, 102], [101, 2088, 2003, 102], (101, 102), np.array([101, 5, 6, 7, 102], dtype=np.int64)]
    with TEIClient(scripted.url, retry=FAST) as remote:
        vectors = remote.embed(ids)
    bodies = scripted.bodies()
    assert [body["inputs"] for body in bodies] == [
        [[101, 7592, 102], [101, 2088, 2003, 102], [101, 102], [101, 5, 6, 7, 102]]
    ]
    assert all(type(i) is int for body in bodies for row in body["inputs"] for i in row)  # numpy ints sent as JSON ints
    np.testing.assert_allclose(vectors, unit([[101, 3, 1], [101, 4, 1], [101, 2, 1], [101, 5, 1]]), rtol=1e-6)


def test_texts_and_ids_in_one_call_keep_their_places(scripted: ScriptedServer) -> None:
    scripted.behaviour = answer_ids
    inputs = ["text 0", [7, 8, 9], "text 2", [11]]
    with TEIClient(scripted.url, retry=FAST) as remote:
        vectors = remote.embed(inputs)
    # one kind per request: OpenAI's `input` cannot mix them, and TEI does not need to
    assert sorted(json.dumps(body["inputs"]) for body in scripted.bodies()) == [
        '["text 0", "text 2"]',
        "[[7, 8, 9], [11]]",
    ]
    np.testing.assert_allclose(vectors, unit([[0, 6, 1], [7, 3, 1], [2, 6, 1], [11, 1, 1]]), rtol=1e-6)


def test_the_async_client_sends_the_same(scripted: ScriptedServer) -> None:
    scripted.behaviour = answer_ids

    async def run() -> np.ndarray:
        async with AsyncTEIClient(scripted.url, retry=FAST) as remote:
            return await remote.embed([[101, 7592, 102], np.array([101, 102])])

    vectors = asyncio.run(run())
    assert scripted.bodies()[0]["inputs"] == [[101, 7592, 102], [101, 102]]
    np.testing.assert_allclose(vectors, unit([[101, 3, 1], [101, 2, 1]]), rtol=1e-6)


def test_a_server_prompt_goes_with_ids_by_name_a_client_prefix_cannot(scripted: ScriptedServer) -> None:
    scripted.behaviour = answer_ids
    scripted.info = {**scripted.info, "prompts": {"query": "query: "}}
    with TEIClient(scripted.url, retry=FAST) as remote:
        remote.embed([[101, 7592, 102]], task="query")
    assert scripted.bodies()[0]["prompt_name"] == "query"  # the server decodes the ids and prepends its prompt
    with TEIClient(scripted.url, retry=FAST, prompts={"query": "query: "}) as remote:  # the prefix is added here
        with pytest.raises(InputError, match=r"texts\[1\] is token ids, but task='query'") as refused:
            remote.embed(["a 0", [101, 102]], task="query")
        assert refused.value.index == 1
        remote.embed(["a 0", [101, 102]], task=["query", None])  # no prompt for the ids: fine
    assert len(scripted.bodies()) == 3


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([101, 7592, 102], r"texts\[0\] is an int: give token ids as one list per input"),
        ([[101, -1, 102]], r"texts\[0\]\[1\] is -1: token ids are ints from 0 to 4294967295"),
        ([[101], [2**32]], r"texts\[1\]\[0\] is 4294967296"),
        ([[101, 1.5]], r"texts\[0\]\[1\] is float 1.5: token ids are ints"),
        ([[True, 102]], r"texts\[0\]\[0\] is bool True"),
        ([[101, "102"]], r"texts\[0\]\[1\] is str '102'"),
        ([["a"], []], r"texts\[0\]\[0\] is str"),
        (["text", []], r"texts\[1\] is an empty token-id list"),
        ([np.array([[1, 2]])], r"texts\[0\] is ndarray, expected a str or a list of token ids"),
        ([np.array([1.0, 2.0])], r"texts\[0\] is ndarray"),
        ([{1, 2}], r"texts\[0\] is set"),
        (b"\x01\x02", "not bytes"),
    ],
)
def test_bad_ids_are_refused_before_any_request(scripted: ScriptedServer, inputs: object, message: str) -> None:
    with TEIClient(scripted.url, retry=FAST) as remote, pytest.raises(InputError, match=message):
        remote.embed(inputs)  # type: ignore[arg-type]
    assert scripted.bodies() == []


def test_a_2d_integer_array_is_one_input_per_row(scripted: ScriptedServer) -> None:
    scripted.behaviour = answer_ids
    with TEIClient(scripted.url, retry=FAST) as remote:
        vectors = remote.embed(np.array([[101, 1, 102], [101, 2, 102]], dtype=np.int32))  # type: ignore[arg-type]
    assert scripted.bodies()[0]["inputs"] == [[101, 1, 102], [101, 2, 102]]
    assert vectors.shape == (2, 3)


def test_openai_route_sends_token_arrays_as_input() -> None:
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/info"):
            return httpx.Response(404)  # an OpenAI-style service
        body = json.loads(request.read())
        bodies.append(body)
        rows = [[float(x[0]), 1.0] if isinstance(x, list) else [float(len(x)), 1.0] for x in body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
        return httpx.Response(200, json={"object": "list", "data": data, "model": "m"})

    remote = TEIClient(
        "https://api.example.com/v1",
        api="openai",
        model="m",
        encoding_format="float",
        transport=httpx.MockTransport(handler),
    )
    vectors = remote.embed([[3, 4, 5], "abcd", [6]])
    assert sorted(json.dumps(body["input"]) for body in bodies) == ['["abcd"]', "[[3, 4, 5], [6]]"]
    assert all(body["model"] == "m" for body in bodies)
    np.testing.assert_allclose(vectors, unit([[3, 1], [4, 1], [6, 1]]), rtol=1e-6)


def test_ids_count_against_the_request_byte_budget(scripted: ScriptedServer) -> None:
    scripted.behaviour = answer_ids
    long_ids = [[1000] * 5, [2000] * 5, [3000] * 5]  # 27 bytes of JSON each
    with TEIClient(scripted.url, retry=FAST, max_request_bytes=40) as remote:
        remote.embed(long_ids)
    # one request per input; they go out concurrently, so in any order
    assert sorted(body["inputs"] for body in scripted.bodies()) == [[ids] for ids in long_ids]
