"""`embedkit serve --max-input-length N`: inputs are cut at N tokens, not at the model's limit (as TEI cuts
at max_input_length), refused past N with truncate=false, and `usage` counts the tokens that ran."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import API_KEY, RunningServer, assert_tei_error, post, start_server, stop_server

LIMIT = 16
LONG = "the quick brown fox jumps over the lazy dog " * 10  # ~92 tokens


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("serve-short"), "--max-input-length", str(LIMIT))
    yield running
    stop_server(running)


def test_texts_are_cut_at_max_input_length(short: RunningServer, minilm, st_minilm) -> None:
    info = httpx.get(f"{short.url}/info", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert info["max_input_length"] == LIMIT
    texts = [LONG, "short text"]
    response = post(short, "/embed", {"inputs": texts})
    assert response.status_code == 200, response.text
    short_tokens = len(minilm.encode(["short text"])[0])
    assert response.headers["x-compute-tokens"] == str(LIMIT + short_tokens)
    served = np.asarray(response.json())
    np.testing.assert_allclose(served, minilm.embed_ids(minilm.encode(texts, max_length=LIMIT)), atol=1e-5)
    assert not np.allclose(served[0], minilm.embed([LONG])[0], atol=1e-2)  # not cut at the model's 256
    # sentence-transformers, told the same limit, agrees
    saved = st_minilm.max_seq_length
    st_minilm.max_seq_length = LIMIT
    try:
        reference = st_minilm.encode(texts, normalize_embeddings=True)
    finally:
        st_minilm.max_seq_length = saved
    np.testing.assert_allclose(served, reference, atol=1e-5)


def test_left_truncation_keeps_the_end(short: RunningServer, minilm) -> None:
    text = "beginning " + LONG + " the very end"
    left = post(short, "/embed", {"inputs": text, "truncation_direction": "Left"}).json()
    ids = minilm.encode([text], max_length=LIMIT, truncation_direction="left")
    assert len(ids[0]) == LIMIT and ids[0][0] == 101 and ids[0][-1] == 102
    np.testing.assert_allclose(left, minilm.embed_ids(ids), atol=1e-5)


def test_openai_usage_counts_the_tokens_that_ran(short: RunningServer, minilm) -> None:
    body = post(short, "/v1/embeddings", {"input": [LONG, LONG]}).json()
    assert body["usage"] == {"prompt_tokens": 2 * LIMIT, "total_tokens": 2 * LIMIT}
    expected = minilm.embed_ids(minilm.encode([LONG], max_length=LIMIT))[0]
    np.testing.assert_allclose(body["data"][1]["embedding"], expected, atol=1e-5)


def test_past_max_input_length_without_truncation_is_refused(short: RunningServer) -> None:
    fits = " ".join(["a"] * (LIMIT - 2))  # + [CLS] and [SEP]: exactly the limit, which TEI allows
    assert post(short, "/embed", {"inputs": fits, "truncate": False}).status_code == 200
    over = post(short, "/embed", {"inputs": ["ok", fits + " a"], "truncate": False})
    message = assert_tei_error(over, 422, "Validation")
    assert (
        message
        == f"Input validation error: `inputs` must have less than {LIMIT} tokens. Given: {LIMIT + 1} (inputs[1])"
    )


def test_token_ids_are_cut_at_max_input_length(short: RunningServer, minilm) -> None:
    ids = minilm.encode([LONG])[0]
    response = post(short, "/embed", {"inputs": [ids]})
    assert response.headers["x-compute-tokens"] == str(LIMIT)
    np.testing.assert_allclose(response.json(), minilm.embed_ids([ids[:LIMIT]]), atol=1e-5)
    refused = post(short, "/embed", {"inputs": [ids], "truncate": False})
    assert "must have less than 16 tokens. Given: " in assert_tei_error(refused, 422, "Validation")


def test_a_limit_with_no_room_for_text_stops_the_server(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="exited with") as failed:
        start_server(tmp_path, "--max-input-length", "2")  # all-MiniLM adds [CLS] and [SEP]
    assert "max_input_length=2 leaves no room for text: the model adds 2 special tokens" in str(failed.value)
