"""LocalEmbedder's public seams: the TokenBatch entry point the server's batcher uses, and `model`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import embedkit
from embedkit.errors import InputError
from embedkit.local.batching import TokenBatch, pack

from ..conftest import write_tiny_bert

TEXTS = ["x", "how do vector databases index embeddings?", "a longer text about chunking and batching " * 4]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> embedkit.LocalEmbedder:
    prompts = {"query": "query: ", "document": "passage: "}
    model_dir = write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_dir, seed=5, prompts=prompts)
    return embedkit.load(model_dir, device="cpu", backend="torch")


def test_a_token_batch_embeds_as_embed_ids(tiny: embedkit.LocalEmbedder) -> None:
    tasks = ["query", "document", None]
    ids = tiny.encode(TEXTS, task=tasks)
    batch = tiny.token_batch(ids, task=tasks)
    assert batch.indices == (0, 1, 2) and batch.lengths == tuple(len(row) for row in ids)
    raw = tiny.embed_token_batch(batch)
    assert raw.dtype == np.float32 and raw.shape == (3, tiny.dimension)
    np.testing.assert_allclose(raw, tiny.embed_ids(ids, task=tasks, normalize=False), atol=1e-6)
    # one row alone gives the same vector: nothing leaks between rows of a batch
    np.testing.assert_allclose(
        raw[1], tiny.embed_token_batch(tiny.token_batch([ids[1]], task="document"))[0], atol=1e-6
    )


def test_rows_come_back_in_batch_order_and_indices_say_where_they_belong(tiny: embedkit.LocalEmbedder) -> None:
    ids = tiny.encode(TEXTS)
    (batch,) = pack(ids, batch_tokens=10_000, max_batch_size=8, pad_id=0)  # longest first
    assert batch.indices == (2, 1, 0)
    raw = tiny.embed_token_batch(batch)
    np.testing.assert_allclose(raw[list(batch.indices).index(0)], tiny.embed(TEXTS, normalize=False)[0], atol=1e-6)


def test_token_batch_checks_what_it_is_given(tiny: embedkit.LocalEmbedder) -> None:
    with pytest.raises(InputError, match=r"inputs\[1\]\[0\]: token id"):
        tiny.token_batch([[101, 102], [10**9]])
    with pytest.raises(InputError, match=r"inputs\[0\] is \d+ tokens long, over this model's limit"):
        tiny.token_batch([[101] * (tiny.max_input_tokens + 1)])
    with pytest.raises(InputError, match="task has 1 entries for 2 texts"):
        tiny.token_batch([[101, 102], [101, 102]], task=["query"])


def test_model_is_the_declared_boundary(tiny: embedkit.LocalEmbedder) -> None:
    model = tiny.model
    assert model.hidden_size * len(tiny.describe()["pooling"]) == tiny.dimension
    assert model.adapter_names == () and model.merged_adapter is None
    assert model.max_positions >= tiny.max_input_tokens and model.learned_positions
    batch = TokenBatch.from_ids(tiny.encode(TEXTS))
    assert tuple(model(batch).shape) == (batch.tokens, model.hidden_size)  # packed states [N, H]
