"""Text that cannot be encoded as UTF-8 (a lone surrogate, valid in JSON as "\\ud800", e.g. half of a truncated
emoji) is an InputError naming the text's index and the character, locally and in the TEI clients, before
the tokenizer sees it or any request is sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import numpy as np
import pytest

from embedkit import AsyncTEIClient, InputError, TEIClient
from embedkit.embedder import iter_windows, validate_texts

INFO = {"model_id": "m", "max_client_batch_size": 4, "max_input_length": 256, "max_batch_tokens": 16384}


def recording_transport(sent: list[httpx.Request]) -> httpx.MockTransport:
    """A TEI stand-in that keeps every request it is sent: /info, /embed (3-d vectors) and /tokenize."""

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path == "/info":
            return httpx.Response(200, json=INFO)
        inputs = json.loads(request.read())["inputs"]
        if request.url.path == "/tokenize":
            return httpx.Response(200, json=[[] for _ in inputs])
        return httpx.Response(200, json=[[1.0, float(len(text)), 0.0] for text in inputs])

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["ok", "bad \ud800 text"], r"texts\[1\] cannot be encoded as UTF-8: lone surrogate '\\ud800' at character 4"),
        (
            ["ok", "fine", "\udc00 low"],
            r"texts\[2\] cannot be encoded as UTF-8: lone surrogate '\\udc00' at character 0",
        ),
        (["emoji cut \ud83d"], r"texts\[0\] .* lone surrogate '\\ud83d' at character 10"),
    ],
)
def test_validation_names_index_and_character(texts: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        validate_texts(texts)
    assert caught.value.index == len(texts) - 1
    with pytest.raises(InputError, match=message):
        list(iter_windows(iter(texts), 1))


def test_iter_windows_counts_the_index_over_the_whole_stream() -> None:
    stream = (text for text in ["a", "b", "c", "d \udfff"])
    with pytest.raises(InputError, match=r"texts\[3\] .* '\\udfff' at character 2") as caught:
        list(iter_windows(stream, 2))
    assert caught.value.index == 3


def test_valid_non_ascii_text_passes() -> None:
    texts = ["naïve café", "\U0001f600 emoji", "日本語", "\u200b"]
    assert validate_texts(texts) == texts


# -- local --------------------------------------------------------------------------------------------


def test_local_embed_names_the_text(minilm) -> None:
    with pytest.raises(InputError, match=r"texts\[1\] cannot be encoded as UTF-8: lone surrogate '\\ud800'") as caught:
        minilm.embed(["ok", "bad \ud800 text"])
    assert caught.value.index == 1
    with pytest.raises(InputError, match=r"texts\[0\] .* '\\udc00' at character 3"):
        minilm.embed(["low\udc00"])
    with pytest.raises(InputError, match=r"texts\[1\]"):
        minilm.tokenize(["ok", "bad \ud800"])


def test_local_embed_iter_names_the_stream_index(minilm) -> None:
    def stream() -> Iterator[str]:
        yield from ["one", "two", "three", "four \ud800"]

    with pytest.raises(InputError, match=r"texts\[3\] cannot be encoded as UTF-8"):
        list(minilm.embed_iter(stream(), window=2))


# -- the TEI clients: nothing is sent -----------------------------------------------------------------


def test_tei_client_refuses_before_sending() -> None:
    sent: list[httpx.Request] = []
    with TEIClient("http://tei.test", transport=recording_transport(sent)) as remote:
        with pytest.raises(InputError, match=r"texts\[1\] cannot be encoded as UTF-8: lone surrogate '\\ud800'"):
            remote.embed(["ok", "bad \ud800 text"])
        with pytest.raises(InputError, match=r"texts\[0\] .* '\\udc00'"):
            remote.embed_query("\udc00")
        with pytest.raises(InputError, match=r"texts\[1\]"):
            remote.tokenize(["ok", "bad \ud800"])
        with pytest.raises(InputError, match=r"texts\[1\]"):
            remote.count_tokens(["ok", "bad \ud800"])
        assert sent == []
        # a stream: the windows before the bad text are embedded; the bad text never leaves
        with pytest.raises(InputError, match=r"texts\[5\]"):
            list(remote.embed_iter(iter(["a", "b", "c", "d", "e", "f \ud800"]), window=2))
    bodies = [json.loads(request.read()) for request in sent if request.url.path == "/embed"]
    assert [text for body in bodies for text in body["inputs"]] == ["a", "b", "c", "d"]


def test_async_tei_client_refuses_before_sending() -> None:
    sent: list[httpx.Request] = []

    async def stream() -> AsyncIterator[str]:
        for text in ["a", "b", "c", "d \udc00"]:
            yield text

    async def run() -> None:
        async with AsyncTEIClient("http://tei.test", transport=recording_transport(sent)) as remote:
            with pytest.raises(InputError, match=r"texts\[1\] cannot be encoded as UTF-8: lone surrogate '\\ud800'"):
                await remote.embed(["ok", "bad \ud800 text"])
            with pytest.raises(InputError, match=r"texts\[0\]"):
                await remote.embed_documents(["\udc00"])
            assert sent == []
            # an async stream of windows of 3: the error names the text's place in the whole stream
            parts = []
            with pytest.raises(InputError, match=r"texts\[3\] .* '\\udc00'") as caught:
                async for part in remote.embed_iter(stream(), window=3):
                    parts.append(part)
            assert caught.value.index == 3
            assert np.concatenate(parts).shape == (3, 3)

    asyncio.run(run())
