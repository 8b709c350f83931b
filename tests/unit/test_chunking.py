"""Chunks fit the model's budget and point back into the source exactly."""

from __future__ import annotations

import pytest

from embedkit.chunking import Chunker
from embedkit.errors import InputError


@pytest.fixture(scope="module")
def chunker(minilm) -> Chunker:  # noqa: ANN001
    return Chunker(minilm, max_tokens=40)


def _check(chunker: Chunker, minilm, text: str) -> list:  # noqa: ANN001
    chunks = chunker.split(text)
    for index, chunk in enumerate(chunks):
        assert chunk.index == index
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.token_count == minilm.count_tokens([chunk.text])[0] <= chunker.budget
    # nothing but whitespace is dropped between chunks
    covered = "".join(text[c.start : c.end] for c in chunks)
    assert covered.replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")
    return chunks


def test_markdown_paragraphs_are_packed(chunker: Chunker, minilm, example_docs) -> None:  # noqa: ANN001
    text = (example_docs / "composting.md").read_text()
    chunks = _check(chunker, minilm, text)
    assert len(chunks) > 5
    assert chunks[0].text.startswith("# ")


def test_overlong_word_and_text_without_spaces(chunker: Chunker, minilm) -> None:  # noqa: ANN001
    _check(chunker, minilm, "x" * 3000)
    cjk = "東京は日本の首都です。人口は非常に多いです。" * 20
    chunks = _check(chunker, minilm, cjk)
    assert len(chunks) > 1


def test_budget_leaves_room_for_special_tokens(minilm) -> None:  # noqa: ANN001
    assert Chunker(minilm).budget == minilm.max_input_tokens - 2  # [CLS] and [SEP]
    with pytest.raises(InputError, match="exceeds the model's input limit of 256"):
        Chunker(minilm, max_tokens=1000)
