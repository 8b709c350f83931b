"""`embedkit serve` over HTTP: TEI's shapes and codes, parity with local embedding, bad input, the OpenAI client."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from .conftest import API_KEY, RunningServer

TEXTS = ["how do I reset my password", "Qdrant stores vectors", "ünïcödé text 日本語", "   ", "x" * 40]


def post(server: RunningServer, path: str, body: object, auth: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=auth, timeout=60)


def test_embed_equals_local_embedding(server: RunningServer, auth: dict[str, str], minilm) -> None:
    response = post(server, "/embed", {"inputs": TEXTS}, auth)
    assert response.status_code == 200, response.text
    remote = np.asarray(response.json(), dtype=np.float32)
    local = minilm.embed(TEXTS)
    assert remote.shape == local.shape == (5, 384)
    assert np.min(np.sum(remote * local, axis=1)) >= 0.99999
    assert int(response.headers["x-compute-tokens"]) == sum(len(e.ids) for e in minilm.tokenize(TEXTS))

    raw = np.asarray(post(server, "/embed", {"inputs": TEXTS, "normalize": False}, auth).json())
    np.testing.assert_allclose(raw, minilm.embed(TEXTS, normalize=False), atol=1e-5)
    cut = np.asarray(post(server, "/embed", {"inputs": "one text", "dimensions": 64}, auth).json())
    np.testing.assert_allclose(cut, minilm.embed(["one text"], dimensions=64), atol=1e-5)


def test_single_string_gives_a_list_of_one(server: RunningServer, auth: dict[str, str]) -> None:
    vectors = post(server, "/embed", {"inputs": "just one"}, auth).json()
    assert len(vectors) == 1 and len(vectors[0]) == 384


def test_truncation_direction_and_auto_truncate(server: RunningServer, auth: dict[str, str], minilm) -> None:
    long_text = "start " + "filler " * 400 + "end"
    right = post(server, "/embed", {"inputs": long_text}, auth).json()
    left = post(server, "/embed", {"inputs": long_text, "truncation_direction": "Left"}, auth).json()
    np.testing.assert_allclose(right, minilm.embed([long_text]), atol=1e-5)
    np.testing.assert_allclose(left, minilm.embed([long_text], truncation_direction="left"), atol=1e-5)
    refused = post(server, "/embed", {"inputs": long_text, "truncate": False}, auth)
    assert refused.status_code == 422
    assert refused.json()["error"].startswith("Input validation error: `inputs` must have less than 256 tokens")


def test_openai_client_float_and_base64(server: RunningServer, minilm) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    floats = client.embeddings.create(model="any", input=TEXTS[:3], encoding_format="float")
    assert [item.index for item in floats.data] == [0, 1, 2]
    np.testing.assert_allclose(np.asarray([item.embedding for item in floats.data]), minilm.embed(TEXTS[:3]), atol=1e-5)
    assert floats.usage.total_tokens == sum(len(e.ids) for e in minilm.tokenize(TEXTS[:3]))
    default = client.embeddings.create(model="any", input="one text")  # the SDK asks for base64 by itself
    np.testing.assert_allclose(default.data[0].embedding, minilm.embed(["one text"])[0], atol=1e-5)
    assert floats.model == minilm.model_id


def test_base64_is_little_endian_float32(server: RunningServer, auth: dict[str, str], minilm) -> None:
    body = post(server, "/v1/embeddings", {"input": ["a text"], "encoding_format": "base64"}, auth).json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, minilm.embed(["a text"])[0], atol=1e-6)


def test_tokenize_gives_byte_offsets(server: RunningServer, auth: dict[str, str]) -> None:
    tokens = post(server, "/tokenize", {"inputs": "héllo world"}, auth).json()[0]
    assert [t["text"] for t in tokens] == ["[CLS]", "héllo", "world", "[SEP]"]
    assert (tokens[1]["start"], tokens[1]["stop"], tokens[2]["start"]) == (0, 6, 7)  # é is two bytes
    assert tokens[0]["special"] and tokens[0]["start"] is None


def test_info_health_metrics(server: RunningServer, auth: dict[str, str]) -> None:
    info = httpx.get(f"{server.url}/info", headers=auth).json()
    assert info["max_client_batch_size"] == 8 and info["max_input_length"] == 256
    assert info["model_type"] == {"embedding": {"pooling": "mean"}} and info["prompts"] == {"query": "", "document": ""}
    health = httpx.get(f"{server.url}/health")  # open without a key, as TEI
    assert health.status_code == 200 and health.content == b""
    post(server, "/embed", {"inputs": "counted"}, auth)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'te_request_count{route="embed"}' in metrics and "te_request_duration_bucket" in metrics
    assert "te_batch_next_tokens_count" in metrics


def test_openapi_uses_tei_field_names(server: RunningServer) -> None:
    schemas = httpx.get(f"{server.url}/openapi.json").json()["components"]["schemas"]
    expected = {
        "EmbedRequest": {"inputs", "truncate", "truncation_direction", "prompt_name", "normalize", "dimensions"},
        "OpenAIEmbeddingRequest": {"input", "model", "user", "encoding_format", "dimensions"},
        "OpenAIEmbeddingResponse": {"object", "data", "model", "usage"},
        "SimpleToken": {"id", "text", "special", "start", "stop"},
        "ErrorResponse": {"error", "error_type"},
        "Info": {
            "model_id", "model_sha", "model_dtype", "served_model_name", "model_type", "max_concurrent_requests",
            "max_input_length", "max_batch_tokens", "max_batch_requests", "max_client_batch_size", "auto_truncate",
            "tokenization_workers", "version", "sha", "docker_label",
        },
    }  # fmt: skip
    for name, fields in expected.items():
        assert fields <= set(schemas[name]["properties"]), name
    assert set(schemas["EmbedRequest"]["required"]) == {"inputs"}
    assert schemas["OpenAIEmbeddingRequest"]["properties"]["encoding_format"]["enum"] == ["float", "base64"]


@pytest.mark.parametrize(
    ("body", "status", "error_type", "message"),
    [
        ({"inputs": []}, 400, "Empty", "`inputs` cannot be empty"),
        ({"inputs": ["fine", ""]}, 400, "Empty", "`inputs` cannot be empty"),
        ({"inputs": ["fine", 5]}, 422, "Validation", "inputs"),
        ({"inputs": ["a"] * 9}, 422, "Validation", "batch size 9 > maximum allowed batch size 8"),
        ({"truncate": True}, 422, "Validation", "inputs: Field required"),
        ({"inputs": "x", "prompt_name": "summarise"}, 422, "Validation", "prompt_name 'summarise' was not found"),
        ({"inputs": "x", "dimensions": 0}, 422, "Validation", "`dimensions` should be positive"),
        ({"inputs": "x", "dimensions": 385}, 422, "Validation", "dimensions=385 is out of range"),
        ({"inputs": "x", "truncation_direction": "middle"}, 422, "Validation", "truncation_direction"),
    ],
)
def test_bad_requests_get_tei_answers(
    server: RunningServer, auth: dict[str, str], body: dict, status: int, error_type: str, message: str
) -> None:
    response = post(server, "/embed", body, auth)
    assert response.status_code == status, response.text
    assert response.json()["error_type"] == error_type
    assert message in response.json()["error"]


def test_openai_route_errors_are_flat(server: RunningServer, auth: dict[str, str]) -> None:
    response = post(server, "/v1/embeddings", {"input": ["a"] * 9}, auth)
    assert response.status_code == 422
    assert response.json() == {
        "message": "batch size 9 > maximum allowed batch size 8",
        "code": 422,
        "type": "Validation",
    }


def test_transport_level_refusals_and_the_server_keeps_serving(server: RunningServer, auth: dict[str, str]) -> None:
    wrong = httpx.post(f"{server.url}/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error_type"] == "Unauthorized"
    missing = httpx.post(f"{server.url}/embed", json={"inputs": "x"})
    assert missing.status_code == 401
    assert httpx.get(f"{server.url}/info").status_code == 401
    malformed = httpx.post(
        f"{server.url}/embed", content=b'{"inputs": ["x"', headers={**auth, "content-type": "application/json"}
    )
    assert malformed.status_code == 400 and "JSON" in malformed.json()["error"]
    huge = httpx.post(f"{server.url}/embed", content=b"[" + b'"x",' * 700_000 + b'"x"]', headers=auth)
    assert huge.status_code == 413 and "2000000 bytes" in huge.json()["error"]
    # after all of that, it still answers
    assert post(server, "/embed", {"inputs": "still here"}, auth).status_code == 200
    assert API_KEY not in server.log() and "nope" not in server.log()


def test_sigterm_finishes_in_flight_requests(tmp_path, minilm) -> None:
    import signal
    import threading
    import time

    from .conftest import start_server

    running = start_server(tmp_path, "--max-client-batch-size", "64")
    texts = [f"text {i} " + "long filler words " * 120 for i in range(64)]  # a few seconds of work on CPU
    result: dict[str, httpx.Response] = {}

    def call() -> None:
        result["response"] = httpx.post(
            f"{running.url}/embed", json={"inputs": texts}, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
        )

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.5)  # the request is in the model by now
    running.process.send_signal(signal.SIGTERM)
    worker.join(timeout=120)
    # uvicorn re-raises the signal once it has shut down cleanly, so the exit status names SIGTERM
    assert running.process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Finished server process" in running.log()
    response = result["response"]
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.asarray(response.json()), minilm.embed(texts), atol=1e-5)
    with pytest.raises(httpx.TransportError):  # and it no longer accepts new work
        httpx.get(f"{running.url}/health", timeout=2)


def test_slow_bodies_time_out_and_the_server_keeps_serving(tmp_path, auth: dict[str, str]) -> None:
    import socket
    import time

    from .conftest import start_server, stop_server

    running = start_server(tmp_path, "--body-timeout", "1")
    slow = []
    try:
        host, port = running.url.removeprefix("http://").split(":")
        for _ in range(3):  # several slow-loris clients at once
            sock = socket.create_connection((host, int(port)))
            sock.sendall(
                f"POST /embed HTTP/1.1\r\nHost: x\r\nAuthorization: {auth['Authorization']}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
            )
            slow.append(sock)
        start = time.monotonic()
        for sock in slow:
            sock.settimeout(10)
            answer = _read_response(sock)  # headers and body may arrive in separate segments
            assert answer.startswith("HTTP/1.1 408"), answer
            assert "request body not received within 1 s" in answer
        assert time.monotonic() - start < 5
        assert post(running, "/embed", {"inputs": "still serving"}, auth).status_code == 200
    finally:
        for sock in slow:
            sock.close()
        stop_server(running)


def _read_response(sock) -> str:
    """One whole HTTP response: its headers, then as many body bytes as Content-Length says."""
    received = b""
    while b"\r\n\r\n" not in received and (chunk := sock.recv(4096)):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    headers = dict(line.lower().split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int(headers[b"content-length"])
    while len(body) < length and (chunk := sock.recv(4096)):
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_all_interfaces_without_a_key_is_warned_about(tmp_path) -> None:
    from .conftest import start_server, stop_server

    running = start_server(tmp_path, "--host", "0.0.0.0", api_key=None)
    try:
        assert "without an API key: anyone who can reach this port can use the model" in running.log()
    finally:
        stop_server(running)
    local = start_server(tmp_path)  # the default: 127.0.0.1, with a key from the environment
    try:
        assert "Uvicorn running on http://127.0.0.1:" in local.log() and "without an API key" not in local.log()
    finally:
        stop_server(local)
