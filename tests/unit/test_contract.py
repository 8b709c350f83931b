"""The Embedder contract's pure parts: input validation, Matryoshka checks, the one post-processing."""

from __future__ import annotations

import numpy as np
import pytest

from embedkit.embedder import check_dimensions, postprocess, validate_texts
from embedkit.errors import InputError, UnknownTaskError
from embedkit.tasks import TaskTable


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "texts is empty"),
        ("one string", "not a single str"),
        (["ok", 3], r"texts\[1\] is int, expected str"),
        (["ok", None], r"texts\[1\] is NoneType"),
        (["ok", "fine", ""], r"texts\[2\] is an empty string"),
        (42, "must be a list of strings, got int"),
        (["ok", "a \ud800"], r"texts\[1\] cannot be encoded as UTF-8: lone surrogate '\\ud800' at character 2"),
    ],
)
def test_bad_texts_are_named(texts: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        validate_texts(texts)  # type: ignore[arg-type]


def test_bad_texts_carry_their_index() -> None:
    with pytest.raises(InputError) as caught:
        validate_texts(["ok", "fine", 3])  # type: ignore[list-item]
    assert caught.value.index == 2


def test_whitespace_only_text_is_valid() -> None:
    assert validate_texts(["  ", "\n"]) == ["  ", "\n"]


@pytest.mark.parametrize(
    ("dimensions", "allowed", "message"),
    [
        (385, None, r"dimensions=385 is out of range: this model gives 1..384"),
        (0, None, "out of range"),
        (100, [32, 64, 128], r"not one of this model's Matryoshka sizes: 32, 64, 128"),
        (True, None, "must be an int"),
        ("64", None, "must be an int"),
    ],
)
def test_bad_dimensions(dimensions: object, allowed: list[int] | None, message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_dimensions(dimensions, 384, allowed)  # type: ignore[arg-type]


def test_postprocess_truncates_then_normalises() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(3, 16)).astype(np.float64)
    out = postprocess(raw, dimensions=4)
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_allclose(out, raw[:, :4] / np.linalg.norm(raw[:, :4], axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(postprocess(raw, normalize=False), raw.astype(np.float32))
    zero = postprocess(np.zeros((1, 4)))
    assert np.all(np.isfinite(zero)) and np.all(zero == 0)


def test_tasks_map_aliases_and_list_valid_names() -> None:
    e5 = TaskTable({"query": "query: ", "passage": "passage: "})
    assert e5.prefix("query") == "query: "
    assert e5.prefix("document") == "passage: "
    assert e5.prefix(None) == ""
    with pytest.raises(
        UnknownTaskError, match=r"unknown task 'summarize'; valid tasks for this model: 'query', 'document', 'passage'"
    ):
        e5.prefix("summarize")
    symmetric = TaskTable()
    assert symmetric.prefix("query") == symmetric.prefix("document") == ""
    defaulted = TaskTable({"query": "Q: ", "classification": "C: "}, default_prompt_name="classification")
    assert defaulted.prefix(None) == "C: " and defaulted.prefix("document") == ""
    assert defaulted.names == ["query", "document", "classification"]
