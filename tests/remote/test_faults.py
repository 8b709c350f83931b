"""TEIClient / AsyncTEIClient against a real HTTP server on 127.0.0.1 that fails on cue.

Attempts are counted on the server side: each behaviour must end in the documented outcome after the
documented number of requests.
"""

from __future__ import annotations

import asyncio
import math
import time

import httpx
import numpy as np
import pytest

from embedkit import AsyncTEIClient, AuthError, EmbedkitError, InputError, RemoteError, TEIClient
from embedkit.remote import RetryPolicy

from .conftest import Answer, ScriptedServer

FAST = RetryPolicy(backoff=0.01, max_backoff=0.05)
KEY = "sk-remote-test-93ab"


def texts(count: int) -> list[str]:
    return [f"text {i}" for i in range(count)]


def client(server: ScriptedServer, **settings: object) -> TEIClient:
    settings.setdefault("retry", FAST)
    return TEIClient(server.url, **settings)


def expected(count: int) -> np.ndarray:
    raw = np.array([[i, len(f"text {i}"), 1.0] for i in range(count)], dtype=np.float32)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


# -- batching and order ---------------------------------------------------------------------------


def test_batches_respect_max_client_batch_size_and_keep_order_under_concurrency(scripted: ScriptedServer) -> None:
    # early batches answer last, so completion order is the reverse of input order
    scripted.behaviour = lambda path, body, n: Answer(delay=0.3 / n)
    with client(scripted, max_concurrency=4) as remote:
        vectors = remote.embed(texts(10))
    sizes = [len(body["inputs"]) for body in scripted.bodies()]
    assert sorted(sizes) == [2, 4, 4]
    np.testing.assert_allclose(vectors, expected(10), rtol=1e-6)
    assert [path for path, _ in scripted.requests].count("/info") == 1


def test_client_batch_size_can_only_be_lowered(scripted: ScriptedServer) -> None:
    with client(scripted, batch_size=3) as remote:
        remote.embed(texts(7))
    assert sorted(len(body["inputs"]) for body in scripted.bodies()) == [1, 3, 3]
    with client(scripted, batch_size=100) as remote:
        remote.embed(texts(5))
    assert max(len(body["inputs"]) for body in scripted.bodies()[3:]) == 4


def test_requests_ask_for_raw_vectors_and_normalisation_happens_here(scripted: ScriptedServer) -> None:
    with client(scripted) as remote:
        raw = remote.embed(texts(3), normalize=False)
        unit = remote.embed(texts(3))
    assert all(body["normalize"] is False for body in scripted.bodies())
    assert all(body["truncate"] is True and body["truncation_direction"] == "Right" for body in scripted.bodies())
    np.testing.assert_allclose(raw[:, 0], [0, 1, 2])
    np.testing.assert_allclose(unit, expected(3), rtol=1e-6)


def test_embed_iter_streams_windows_in_order(scripted: ScriptedServer) -> None:
    with client(scripted) as remote:
        parts = list(remote.embed_iter((f"text {i}" for i in range(11)), window=5))
    assert [len(part) for part in parts] == [5, 5, 1]
    np.testing.assert_allclose(np.concatenate(parts), expected(11), rtol=1e-6)


def test_async_client_batches_concurrently_and_keeps_order(scripted: ScriptedServer) -> None:
    scripted.behaviour = lambda path, body, n: Answer(delay=0.3 / n)

    async def run() -> np.ndarray:
        async with AsyncTEIClient(scripted.url, retry=FAST) as remote:
            return await remote.embed(texts(10))

    start = time.perf_counter()
    vectors = asyncio.run(run())
    np.testing.assert_allclose(vectors, expected(10), rtol=1e-6)
    assert time.perf_counter() - start < 0.3 + 0.15 + 0.1 + 1.0  # overlapped, not 0.55 s in sequence plus slack


# -- transient failures are retried ---------------------------------------------------------------


def test_429_with_retry_after_is_honoured_then_succeeds(scripted: ScriptedServer) -> None:
    scripted.behaviour = lambda path, body, n: (
        Answer(429, {"error": "Model is overloaded", "error_type": "Overloaded"}, {"Retry-After": "1"})
        if n == 1
        else Answer()
    )
    start = time.perf_counter()
    with client(scripted) as remote:
        vectors = remote.embed(texts(2))
    assert time.perf_counter() - start >= 0.95  # waited as the server asked, not the 0.01 s backoff
    assert len(scripted.bodies()) == 2
    np.testing.assert_allclose(vectors, expected(2), rtol=1e-6)


def test_503_twice_then_success_takes_three_attempts(scripted: ScriptedServer) -> None:
    scripted.behaviour = lambda path, body, n: (
        Answer(503, {"error": "unhealthy", "error_type": "Unhealthy"}) if n <= 2 else Answer()
    )
    with client(scripted) as remote:
        remote.embed(texts(3))
    assert len(scripted.bodies()) == 3


def test_503_forever_gives_up_after_the_attempt_budget(scripted: ScriptedServer) -> None:
    scripted.behaviour = lambda path, body, n: Answer(503, {"error": "unhealthy", "error_type": "Unhealthy"})
    with client(scripted) as remote, pytest.raises(RemoteError, match="gave up after 4 attempt") as caught:
        remote.embed(texts(3))
    assert caught.value.status == 503
    assert len(scripted.bodies()) == 4


def test_dropped_connections_are_retried(scripted: ScriptedServer) -> None:
    scripted.behaviour = lambda path, body, n: Answer(drop=True) if n <= 2 else Answer()
    with client(scripted) as remote:
        np.testing.assert_allclose(remote.embed(texts(2)), expected(2), rtol=1e-6)
    assert len(scripted.bodies()) == 3


def test_a_server_slower_than_the_timeout_ends_in_remote_error(scripted: ScriptedServer) -> None:
    scripted.behaviour = lambda path, body, n: Answer(delay=1.5)
    policy = RetryPolicy(attempts=2, backoff=0.01)
    with client(scripted, timeout=0.3, retry=policy) as remote:
        start = time.perf_counter()
        with pytest.raises(RemoteError, match="timed out") as caught:
            remote.embed(texts(1))
        assert time.perf_counter() - start < 1.5
    assert caught.value.status is None
    assert len(scripted.bodies()) == 2


def test_total_time_bounds_the_retries(scripted: ScriptedServer) -> None:
    scripted.behaviour = lambda path, body, n: Answer(503, {"error": "busy"}, {"Retry-After": "0.4"})
    policy = RetryPolicy(attempts=50, backoff=0.01, total_seconds=1.0)
    with client(scripted, retry=policy) as remote, pytest.raises(RemoteError):
        remote.embed(texts(1))
    assert 2 <= len(scripted.bodies()) <= 3  # a wait of 0.4 s that would end past 1 s is not started


def test_async_retries_the_same_way(scripted: ScriptedServer) -> None:
    scripted.behaviour = lambda path, body, n: Answer(503, {"error": "busy"}) if n <= 2 else Answer()

    async def run() -> np.ndarray:
        async with AsyncTEIClient(scripted.url, retry=FAST) as remote:
            return await remote.embed(texts(3))

    np.testing.assert_allclose(asyncio.run(run()), expected(3), rtol=1e-6)
    assert len(scripted.bodies()) == 3


# -- size refusals split the batch ----------------------------------------------------------------


def test_413_splits_the_batch_and_retries_the_halves(scripted: ScriptedServer) -> None:
    scripted.behaviour = lambda path, body, n: (
        Answer(413, b"Failed to buffer the request body: length limit exceeded")
        if len(body["inputs"]) > 1
        else Answer()
    )
    with client(scripted, max_concurrency=1) as remote:
        vectors = remote.embed(texts(4))
    np.testing.assert_allclose(vectors, expected(4), rtol=1e-6)
    assert [len(body["inputs"]) for body in scripted.bodies()] == [4, 2, 1, 1, 2, 1, 1]


def test_422_batch_size_message_resends_in_the_server_size(scripted: ScriptedServer) -> None:
    def behaviour(path: str, body: dict, n: int) -> Answer:
        size = len(body["inputs"])
        if size > 3:
            return Answer(
                422, {"error": f"batch size {size} > maximum allowed batch size 3", "error_type": "Validation"}
            )
        return Answer()

    scripted.behaviour = behaviour
    with client(scripted, max_concurrency=1) as remote:
        vectors = remote.embed(texts(4))
    np.testing.assert_allclose(vectors, expected(4), rtol=1e-6)
    assert [len(body["inputs"]) for body in scripted.bodies()] == [4, 3, 1]


def test_a_single_text_too_large_alone_is_an_input_error(scripted: ScriptedServer) -> None:
    scripted.behaviour = lambda path, body, n: Answer(413, b"Failed to buffer the request body: length limit exceeded")
    with client(scripted) as remote, pytest.raises(InputError, match=r"texts\[0\] is too large") as caught:
        remote.embed(["text 0"])
    assert caught.value.index == 0


# -- refusals that are final ------------------------------------------------------------------------


def too_long(body: dict) -> Answer:
    return Answer(
        422,
        {
            "error": "Input validation error: `inputs` must have less than 256 tokens. Given: 300",
            "error_type": "Validation",
        },
    )


def test_422_for_one_bad_input_is_an_input_error_with_its_index_and_no_retry(scripted: ScriptedServer) -> None:
    scripted.behaviour = lambda path, body, n: too_long(body) if any("BAD" in t for t in body["inputs"]) else Answer()
    batch = texts(6)
    batch[5] = "BAD 5"
    with client(scripted, batch_size=1) as remote, pytest.raises(InputError, match="must have less than 256") as caught:
        remote.embed(batch)
    assert caught.value.index == 5
    assert sum("BAD 5" in body["inputs"] for body in scripted.bodies()) == 1


def test_422_naming_the_input_maps_to_the_callers_index(scripted: ScriptedServer) -> None:
    # embedkit serve names the offending input as inputs[i] within the request
    def behaviour(path: str, body: dict, n: int) -> Answer:
        for i, text in enumerate(body["inputs"]):
            if "BAD" in text:
                return Answer(
                    422, {"error": f"Input validation error: too long (inputs[{i}])", "error_type": "Validation"}
                )
        return Answer()

    scripted.behaviour = behaviour
    batch = texts(8)
    batch[6] = "BAD 6"
    with client(scripted, max_concurrency=1) as remote, pytest.raises(InputError) as caught:
        remote.embed(batch)
    assert caught.value.index == 6  # second batch of four, third input
    assert "texts[6]" in str(caught.value)


def test_422_without_an_index_in_a_batch_leaves_the_index_unknown(scripted: ScriptedServer) -> None:
    scripted.behaviour = lambda path, body, n: too_long(body)
    with client(scripted) as remote, pytest.raises(InputError) as caught:
        remote.embed(texts(3))
    assert caught.value.index is None
    assert len(scripted.bodies()) == 1


def test_other_4xx_are_not_retried(scripted: ScriptedServer) -> None:
    scripted.behaviour = lambda path, body, n: Answer(404, b"not here")
    with client(scripted) as remote, pytest.raises(RemoteError, match="404") as caught:
        remote.embed(texts(1))
    assert caught.value.status == 404
    assert len(scripted.bodies()) == 1


def test_401_is_an_auth_error_and_the_key_never_shows(scripted: ScriptedServer) -> None:
    # a hostile server echoing the key back must not get it into our messages either
    scripted.behaviour = lambda path, body, n: Answer(401, {"error": f"bad key {body['_authorization']}"})
    with client(scripted, api_key=KEY) as remote:
        with pytest.raises(AuthError) as caught:
            remote.embed(texts(2))
        assert KEY not in repr(remote)
    assert isinstance(caught.value, RemoteError) and isinstance(caught.value, EmbedkitError)
    assert caught.value.status == 401
    assert KEY not in str(caught.value)
    assert len(scripted.bodies()) == 1
    assert scripted.bodies()[0]["_authorization"] == f"Bearer {KEY}"


def test_api_key_from_the_environment(scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDKIT_API_KEY", KEY)
    with client(scripted) as remote:
        remote.embed(texts(1))
        assert KEY not in repr(remote) and "api_key=set" in repr(remote)
    assert scripted.bodies()[0]["_authorization"] == f"Bearer {KEY}"


def test_the_key_is_not_logged(scripted: ScriptedServer, caplog: pytest.LogCaptureFixture) -> None:
    scripted.behaviour = lambda path, body, n: Answer(503, {"error": f"echo {body['_authorization']}"})
    with client(scripted, api_key=KEY) as remote, caplog.at_level("DEBUG"), pytest.raises(RemoteError) as caught:
        remote.embed(texts(1))
    assert "retrying" in caplog.text
    assert KEY not in caplog.text and KEY not in str(caught.value)


# -- answers that cannot be trusted -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (Answer(200, [[1.0, 2.0, 3.0]]), "1 vectors"),  # one vector for two texts
        (Answer(200, [[1.0, float("nan"), 3.0], [1.0, 2.0, 3.0]]), "NaN"),
        (Answer(200, [[1.0, 2.0], [1.0, 2.0, 3.0]]), "equal-length"),
        (Answer(200, b"{not json"), "invalid JSON"),
        (Answer(200, {"vectors": []}), "vectors"),
    ],
)
def test_malformed_answers_are_remote_errors_never_vectors(
    scripted: ScriptedServer, answer: Answer, message: str
) -> None:
    scripted.behaviour = lambda path, body, n: answer
    with client(scripted) as remote, pytest.raises(RemoteError, match=message):
        remote.embed(texts(2))
    assert len(scripted.bodies()) == 1


def test_a_change_of_dimension_between_answers_is_refused(scripted: ScriptedServer) -> None:
    with client(scripted) as remote:
        remote.embed(texts(1))
        scripted.behaviour = lambda path, body, n: Answer(200, [[1.0, 2.0]])
        with pytest.raises(RemoteError, match="earlier answers had 3"):
            remote.embed(texts(1))


def test_a_never_ending_answer_is_cut_off(scripted: ScriptedServer) -> None:
    scripted.behaviour = lambda path, body, n: Answer(endless=True)
    start = time.perf_counter()
    with (
        client(scripted, max_response_bytes=1_000_000) as remote,
        pytest.raises(RemoteError, match="max_response_bytes"),
    ):
        remote.embed(texts(2))
    assert time.perf_counter() - start < 10 and len(scripted.bodies()) == 1


def test_response_size_is_capped(scripted: ScriptedServer) -> None:
    scripted.behaviour = lambda path, body, n: Answer(200, [[1.0] * 5000 for _ in body["inputs"]])
    with client(scripted, max_response_bytes=10_000) as remote, pytest.raises(RemoteError, match="max_response_bytes"):
        remote.embed(texts(2))


# -- tasks without server prompts -------------------------------------------------------------------


def test_known_model_prefix_is_prepended_client_side(scripted: ScriptedServer) -> None:
    scripted.info["model_id"] = "Qwen/Qwen3-Embedding-0.6B"
    with client(scripted) as remote:
        remote.embed(["what is x 0"], task="query")
        remote.embed(["a passage 0"], task="document")
    query, document = scripted.bodies()
    assert query["inputs"] == [
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:what is x 0"
    ]
    assert "prompt_name" not in query
    assert document["inputs"] == ["a passage 0"]


def test_server_prompts_are_used_by_name_never_with_a_prefix(scripted: ScriptedServer) -> None:
    scripted.info["prompts"] = {"query": "q: ", "document": "", "classification": "c: "}
    with client(scripted) as remote:
        remote.embed(["x 0", "y 1", "z 2"], task=["query", None, "classification"])
    sent = {tuple(body["inputs"]): body.get("prompt_name") for body in scripted.bodies()}
    assert sent == {("x 0",): "query", ("y 1",): None, ("z 2",): "classification"}


def test_task_errors(scripted: ScriptedServer) -> None:
    scripted.info["model_id"] = "my-org/private-model"
    with client(scripted) as remote:
        with pytest.raises(InputError, match="known-prompt table"):
            remote.embed(["x 0"], task="query")
        remote.embed(["x 0"])  # no task needs no prompts
    scripted.info["model_id"] = "jinaai/jina-embeddings-v3"
    with client(scripted) as remote, pytest.raises(InputError, match=r"LoRA adapter 'retrieval.query'"):
        remote.embed(["x 0"], task="query")
    with client(scripted, prompts={"query": "my query: "}) as remote:
        remote.embed(["x 0"], task="query")
    assert scripted.bodies()[-1]["inputs"] == ["my query: x 0"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.embed([]), "texts is empty"),
        (lambda c: c.embed(["a", ""]), r"texts\[1\] is an empty string"),
        (lambda c: c.embed("a"), "not a single str"),
        (lambda c: c.embed(["a 0"], dimensions=0), "dimensions=0"),
        (lambda c: c.embed(["a 0"], truncation_direction="middle"), "truncation_direction"),
        (lambda c: c.embed(["a 0", "b 1"], task=["query"]), "1 entries for 2 texts"),
    ],
)
def test_bad_input_is_refused_before_any_request(scripted: ScriptedServer, call: object, message: str) -> None:
    with client(scripted) as remote, pytest.raises(InputError, match=message):
        call(remote)  # type: ignore[operator]
    assert scripted.bodies() == []


def test_constructor_arguments_are_checked() -> None:
    with pytest.raises(InputError, match="base_url"):
        TEIClient("localhost:8080")
    with pytest.raises(InputError, match="max_concurrency"):
        TEIClient("http://127.0.0.1:1", max_concurrency=0)
    with pytest.raises(InputError, match="api must be"):
        TEIClient("http://127.0.0.1:1", api="grpc")  # type: ignore[arg-type]


def test_an_unreachable_server_is_a_remote_error() -> None:
    with TEIClient("http://127.0.0.1:9", retry=RetryPolicy(attempts=2, backoff=0.01)) as remote:
        assert remote.health() is False
        with pytest.raises(RemoteError, match="gave up after 2"):
            remote.embed(["x"])


def test_mock_transport_seam() -> None:
    """httpx's MockTransport plugs in where no server can: an OpenAI-style service with no /info."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/info"):
            return httpx.Response(404)
        body = request.read()
        count = len(__import__("json").loads(body)["input"])
        data = [{"object": "embedding", "index": i, "embedding": [3.0, 4.0]} for i in reversed(range(count))]
        return httpx.Response(200, json={"object": "list", "data": data, "model": "m"})

    remote = TEIClient(
        "https://api.example.com/v1",
        api="openai",
        model="m",
        encoding_format="float",
        transport=httpx.MockTransport(handler),
    )
    vectors = remote.embed(["a", "b", "c"])
    np.testing.assert_allclose(vectors, [[0.6, 0.8]] * 3)
    assert remote.model_id == "m"
    with pytest.raises(RemoteError, match="input limit"):
        _ = remote.max_input_tokens
    with pytest.raises(InputError, match="normalize=False"):
        remote.embed(["a"], normalize=False)
    assert math.isclose(float(np.linalg.norm(vectors[0])), 1.0, rel_tol=1e-6)
