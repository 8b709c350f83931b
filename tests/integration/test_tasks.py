"""Per-text tasks: one call may mix tasks, and each text is embedded as if its task's texts were alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import embedkit
from embedkit.errors import InputError, UnknownTaskError

from ..conftest import write_tiny_bert

PROMPTS = {"query": "query: ", "passage": "passage: ", "classification": "classify this: "}
TEXTS = ["how do I reset my password", "Passwords are reset from the account page.", "a third text", "short"]


@pytest.fixture(scope="module", params=[True, False], ids=["include_prompt", "exclude_prompt"])
def prompt_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    model_dir = write_tiny_bert(tmp_path_factory.mktemp("prompted"), minilm_dir, prompts=PROMPTS)
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "include_prompt": request.param}))
    return model_dir


def test_mixed_tasks_equal_per_task_calls(prompt_model: Path) -> None:
    embedder = embedkit.load(prompt_model, device="cpu")
    tasks = ["query", "document", None, "classification"]
    mixed = embedder.embed(TEXTS, task=tasks)
    for index, (text, task) in enumerate(zip(TEXTS, tasks, strict=True)):
        alone = embedder.embed([text], task=task)[0]
        np.testing.assert_allclose(mixed[index], alone, atol=1e-6, err_msg=f"text {index}, task {task}")


def test_matches_sentence_transformers_prompts(prompt_model: Path) -> None:
    """include_prompt true or false, the prompt tokens are pooled (or not) as sentence-transformers does."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(prompt_model), device="cpu")
    embedder = embedkit.load(prompt_model, device="cpu")
    mixed = embedder.embed(TEXTS[:2], task=["query", "document"])
    expected = np.stack(
        [
            reference.encode(TEXTS[0], prompt_name="query", normalize_embeddings=True),
            reference.encode(TEXTS[1], prompt_name="passage", normalize_embeddings=True),
        ]
    )
    np.testing.assert_allclose(mixed, expected, atol=1e-5)


def test_default_task_applies_to_calls_without_one(prompt_model: Path) -> None:
    embedder = embedkit.load(prompt_model, device="cpu", default_task="query")
    np.testing.assert_allclose(embedder.embed(TEXTS), embedder.embed(TEXTS, task="query"), atol=1e-6)
    assert embedder.describe()["default_task"] == "query"


@pytest.mark.parametrize(
    ("task", "error", "message"),
    [
        (["query"], InputError, "task has 1 entries for 4 texts"),
        (["query", 3, None, None], InputError, r"task\[1\] must be a task name or None, got int"),
        (["query", "summarise", None, None], UnknownTaskError, "unknown task 'summarise'.*'classification'"),
        (7, InputError, "task must be a task name, a list of them or None, got int"),
    ],
)
def test_bad_task_lists_are_named(prompt_model: Path, task: object, error: type, message: str) -> None:
    embedder = embedkit.load(prompt_model, device="cpu")
    with pytest.raises(error, match=message):
        embedder.embed(TEXTS, task=task)  # type: ignore[arg-type]


def test_bad_default_task_and_merge_without_adapters(prompt_model: Path) -> None:
    with pytest.raises(UnknownTaskError, match="unknown task 'summarise'"):
        embedkit.load(prompt_model, device="cpu", default_task="summarise")
    with pytest.raises(InputError, match="this model has no LoRA adapters to merge"):
        embedkit.load(prompt_model, device="cpu", default_task="query", merge_lora=True)
