"""`--max-concurrent-requests` bounds embedding REQUESTS in flight, not the texts they carry: 32 clients
posting 32 texts each are served at the default 512, and 429 (in TEI's shape) comes only when that
many requests are really waiting.

TEI >= 1.9 takes one permit per input (PR #726), which would refuse most of that load at 512; embedkit
departs from it on purpose (see `admitted` in embedkit/server/app.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from .conftest import API_KEY, RunningServer, assert_tei_error, start_server, stop_server

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _at_once(url: str, bodies: list[tuple[str, dict]]) -> list[httpx.Response]:
    """POST every (path, body) from its own thread, all released together."""
    ready = threading.Barrier(len(bodies), timeout=60)
    responses: list[httpx.Response | None] = [None] * len(bodies)

    def client(index: int) -> None:
        path, body = bodies[index]
        with httpx.Client(timeout=300, headers=AUTH) as http:
            ready.wait()
            responses[index] = http.post(f"{url}{path}", json=body)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(response is not None for response in responses)
    return responses  # type: ignore[return-value]


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("serve-default"))  # --max-concurrent-requests 512
    yield running
    stop_server(running)


def test_32_clients_posting_32_texts_are_all_served(default_server: RunningServer, minilm) -> None:
    batches = [[f"client {c} text {t}: vectors, search and embeddings" for t in range(32)] for c in range(32)]
    responses = _at_once(default_server.url, [("/embed", {"inputs": texts}) for texts in batches])
    statuses = [response.status_code for response in responses]
    print(f"\n32 clients x 32 texts at the default limit: {statuses.count(429)} of 32 requests refused")
    assert statuses == [200] * 32, [response.text[:200] for response in responses if response.status_code != 200]
    for client in (0, 17, 31):  # every answer is that client's own vectors
        np.testing.assert_allclose(responses[client].json(), minilm.embed(batches[client]), atol=1e-5)


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("serve-one"), "--max-concurrent-requests", "1")
    yield running
    stop_server(running)


def test_more_requests_than_the_limit_get_429_in_tei_shape(one_at_a_time: RunningServer) -> None:
    slow = [f"text {i} " + "long filler words about vector search " * 40 for i in range(8)]  # ~0.5 s a request
    bodies = [("/embed", {"inputs": slow}), ("/v1/embeddings", {"input": slow})] * 4
    responses = _at_once(one_at_a_time.url, bodies)
    refused = [response for response in responses if response.status_code == 429]
    assert any(response.status_code == 200 for response in responses)
    assert refused, [response.status_code for response in responses]
    for response in refused:
        assert assert_tei_error(response, 429, "Overloaded") == "Model is overloaded"
    # nothing stays counted once the burst is over: the next request is served
    after = httpx.post(f"{one_at_a_time.url}/embed", json={"inputs": slow}, headers=AUTH, timeout=60)
    assert after.status_code == 200, after.text
    metrics = httpx.get(f"{one_at_a_time.url}/metrics").text
    assert f'te_request_failure{{err="overloaded"}} {len(refused)}' in metrics


def test_tokenize_takes_no_permit(one_at_a_time: RunningServer) -> None:
    slow = ["long filler words about vector search " * 40] * 8
    bodies = [("/embed", {"inputs": slow})] + [("/tokenize", {"inputs": "a few words"})] * 4
    responses = _at_once(one_at_a_time.url, bodies)
    assert [response.status_code for response in responses[1:]] == [200] * 4  # as in TEI
