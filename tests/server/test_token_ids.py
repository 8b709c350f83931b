"""Token-id inputs, as TEI takes them: `[101, 7592, 102]` is one input, `[[...], [...]]` a batch, on /embed
and on /v1/embeddings (OpenAI's token arrays). The ids of a text embed exactly as the text does.

As in TEI, the ids are the model's whole input: the client includes the special tokens, nothing is
added, and past the limit they are cut plainly. With a prompt_name they are decoded without their
special tokens and tokenized again behind the prompt (TEI's core/src/tokenization.rs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import embedkit
from embedkit import InputError

from ..conftest import write_tiny_bert
from .conftest import RunningServer, assert_tei_error, post, start_server, stop_server

TEXTS = ["how do I reset my password", "Qdrant stores vectors", "ünïcödé text 日本語", "   ", "x" * 40]
LONG = "the quick brown fox jumps over the lazy dog " * 40  # ~360 tokens: past all-MiniLM's 256


def ids_of(server: RunningServer, texts: list[str], **fields: object) -> list[list[int]]:
    tokens = post(server, "/tokenize", {"inputs": texts, **fields}).json()
    return [[token["id"] for token in row] for row in tokens]


def test_ids_of_a_text_embed_as_the_text(server: RunningServer, minilm) -> None:
    ids = ids_of(server, TEXTS)
    by_ids = post(server, "/embed", {"inputs": ids})
    by_text = post(server, "/embed", {"inputs": TEXTS})
    assert by_ids.status_code == 200, by_ids.text
    np.testing.assert_allclose(by_ids.json(), by_text.json(), atol=1e-6)
    np.testing.assert_allclose(by_ids.json(), minilm.embed(TEXTS), atol=1e-5)
    assert by_ids.headers["x-compute-tokens"] == by_text.headers["x-compute-tokens"] == str(sum(map(len, ids)))
    assert by_ids.headers["x-compute-characters"] == str(sum(map(len, ids)))  # TEI counts ids for id inputs


def test_one_id_list_is_one_input_and_texts_and_ids_mix(server: RunningServer, minilm) -> None:
    hello = ids_of(server, ["hello"])[0]
    assert hello == [101, 7592, 102]
    single = post(server, "/embed", {"inputs": hello}).json()
    assert len(single) == 1  # TEI's untagged grammar: a flat list of ints is ONE input
    np.testing.assert_allclose(single, minilm.embed(["hello"]), atol=1e-5)
    mixed = post(server, "/embed", {"inputs": ["Qdrant stores vectors", hello], "normalize": False}).json()
    np.testing.assert_allclose(mixed, minilm.embed(["Qdrant stores vectors", "hello"], normalize=False), atol=1e-5)


def test_openai_token_arrays(server: RunningServer, minilm) -> None:
    ids = ids_of(server, TEXTS[:3])
    batch = post(server, "/v1/embeddings", {"input": ids}).json()
    one = post(server, "/v1/embeddings", {"input": ids[0], "encoding_format": "float"}).json()
    np.testing.assert_allclose([item["embedding"] for item in batch["data"]], minilm.embed(TEXTS[:3]), atol=1e-5)
    assert [item["index"] for item in batch["data"]] == [0, 1, 2]
    assert batch["usage"] == {"prompt_tokens": sum(map(len, ids)), "total_tokens": sum(map(len, ids))}
    assert len(one["data"]) == 1 and one["usage"]["prompt_tokens"] == len(ids[0])
    np.testing.assert_allclose(one["data"][0]["embedding"], minilm.embed(TEXTS[:1])[0], atol=1e-5)


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/embed", {"inputs": [[101, 30522, 102]]}, "inputs[0][1]: token id 30522"),  # one past the vocabulary
        ("/embed", {"inputs": ["fine", [101, 7592, 102], [101, -1, 102]]}, "inputs[2][1]: token id -1"),
        ("/embed", {"inputs": [101, 7592, 4_000_000_000]}, "inputs[0][2]: token id 4000000000"),
        ("/v1/embeddings", {"input": [[101, 102], [101, 99999, 102]]}, "inputs[1][1]: token id 99999"),
    ],
)
def test_an_id_outside_the_vocabulary_is_a_422_naming_it(
    server: RunningServer, path: str, body: dict, where: str
) -> None:
    message = assert_tei_error(post(server, path, body), 422, "Validation")
    assert message.startswith("Input validation error: ") and where in message
    assert "outside this model's vocabulary (ids 0..30521)" in message


@pytest.mark.parametrize("inputs", [[[]], [[101, 102], []], []])
def test_empty_id_lists_are_400_empty(server: RunningServer, inputs: list) -> None:
    assert_tei_error(post(server, "/embed", {"inputs": inputs}), 400, "Empty")


def test_long_ids_are_cut_plainly_or_refused(server: RunningServer, minilm) -> None:
    ids = minilm.encode([LONG])[0]  # untruncated, [CLS] ... [SEP]
    assert len(ids) > 256
    cut = post(server, "/embed", {"inputs": ids})
    assert cut.headers["x-compute-tokens"] == "256"
    np.testing.assert_allclose(cut.json(), minilm.embed_ids([ids[:256]]), atol=1e-5)  # TEI: the [SEP] goes too
    left = post(server, "/embed", {"inputs": ids, "truncation_direction": "left"}).json()
    np.testing.assert_allclose(left, minilm.embed_ids([ids[-256:]]), atol=1e-5)
    refused = post(server, "/embed", {"inputs": ids, "truncate": False})
    message = assert_tei_error(refused, 422, "Validation")
    assert message == f"Input validation error: `inputs` must have less than 256 tokens. Given: {len(ids)} (inputs[0])"


# -- the runtime under the route ---------------------------------------------------------------


def test_embed_ids_of_encode_equals_embed(minilm) -> None:
    texts = [*TEXTS, LONG]
    for direction in ("right", "left"):
        ids = minilm.encode(texts, max_length=minilm.max_input_tokens, truncation_direction=direction)
        assert len(ids[-1]) == 256 and ids[-1][0] == 101 and ids[-1][-1] == 102  # text truncation keeps specials
        np.testing.assert_allclose(
            minilm.embed_ids(ids), minilm.embed(texts, truncation_direction=direction), atol=1e-6
        )
    assert minilm.encode([[101, 7592, 102], "hello"]) == [[101, 7592, 102], [101, 7592, 102]]


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([[101, 7592.0, 102]], r"inputs\[0\]\[1\] is float, expected an int token id"),
        ([[101, True, 102]], r"inputs\[0\]\[1\] is bool"),
        ([[101, 102], "text"], r"inputs\[1\] is str"),
        ([[]], r"inputs\[0\] is an empty list of token ids"),
        ([[101, 10**30]], r"inputs\[0\]\[1\]: token id 10{30} is outside"),
        ([], "non-empty list"),
        ([[101, 102] * 200], r"inputs\[0\] is 400 tokens long, over this model's limit of 256"),
    ],
)
def test_embed_ids_refuses_bad_ids_naming_them(minilm, ids: list, message: str) -> None:
    with pytest.raises(InputError, match=message):
        minilm.embed_ids(ids, truncate=False)


@pytest.fixture(scope="module")
def prompted_model(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return write_tiny_bert(
        tmp_path_factory.mktemp("prompted"), minilm_dir, prompts={"query": "query: ", "document": ""}
    )


@pytest.fixture(scope="module")
def prompted_server(tmp_path_factory: pytest.TempPathFactory, prompted_model: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("serve-prompted"), str(prompted_model))
    yield running
    stop_server(running)


def test_ids_with_a_prompt_name_get_the_prompt_as_in_tei(prompted_server: RunningServer, prompted_model: Path) -> None:
    local = embedkit.load(prompted_model, device="cpu")
    texts = ["how do I reset my password", "Qdrant stores vectors"]
    ids = ids_of(prompted_server, texts)  # no prompt: [CLS] text [SEP]
    with_prompt = post(prompted_server, "/embed", {"inputs": ids, "prompt_name": "query", "normalize": False})
    assert with_prompt.status_code == 200, with_prompt.text
    np.testing.assert_allclose(with_prompt.json(), local.embed(texts, task="query", normalize=False), atol=1e-5)
    text_with_prompt = post(prompted_server, "/embed", {"inputs": texts, "prompt_name": "query", "normalize": False})
    assert with_prompt.headers["x-compute-tokens"] == text_with_prompt.headers["x-compute-tokens"]
    plain = post(prompted_server, "/embed", {"inputs": ids, "normalize": False}).json()
    np.testing.assert_allclose(plain, local.embed(texts, normalize=False), atol=1e-5)
    assert not np.allclose(plain, with_prompt.json(), atol=1e-3)
    # in the runtime: encode() gives what runs, and embed_ids of it equals embed, task included
    encoded = local.encode(ids, task="query")
    assert encoded == local.encode(texts, task="query")
    np.testing.assert_allclose(local.embed_ids(encoded, task="query"), local.embed(texts, task="query"), atol=1e-6)
