"""Late chunking on the default model: one pass over the document, token states pooled per chunk span."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedkit.chunking import Chunker, embed_chunks
from embedkit.errors import InputError

# each document names its subject once; the later chunks only say "she", "it", "the city"
AMBIGUOUS = [
    (
        "Marie Curie was a physicist and chemist who did pioneering research on radioactivity in Paris.\n\n"
        "She was the first woman to win a Nobel Prize, and the only person to win it in two different sciences.",
        "Marie Curie Nobel Prize",
    ),
    (
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars, completed in 1889.\n\n"
        "It was at first criticised by artists, but it became a cultural icon and draws millions of visitors.",
        "Eiffel Tower visitors and critics",
    ),
    (
        "Kyoto served as Japan's imperial capital for more than a thousand years.\n\n"
        "The city is famous for its temples, gardens and wooden machiya houses, and for the Gion district.",
        "temples and gardens in Kyoto",
    ),
]


@pytest.mark.parametrize(("document", "query"), AMBIGUOUS)
def test_late_chunks_carry_the_name_the_naive_chunk_lacks(minilm, document: str, query: str) -> None:
    chunks = Chunker(minilm, 32).split(document)
    assert len(chunks) == 2 and chunks[1].text.split()[0] in ("She", "It", "The")
    q = minilm.embed_query(query)
    naive = embed_chunks(minilm, document, chunks) @ q
    late = embed_chunks(minilm, document, chunks, late=True) @ q
    assert late[1] > naive[1] + 0.05, (naive, late)


def test_equals_pooling_transformers_token_states(minilm, minilm_dir) -> None:
    """Within the model's limit: the mean of transformers' BertModel states over each span's tokens."""
    import torch
    from transformers import BertModel

    document = AMBIGUOUS[0][0]
    chunks = Chunker(minilm, 30).split(document)
    ours = embed_chunks(minilm, document, chunks, late=True, normalize=False)
    reference = BertModel.from_pretrained(str(minilm_dir)).eval()
    encoding = minilm.tokenizer.encode(document)
    with torch.no_grad():
        states = reference(torch.tensor([encoding.ids])).last_hidden_state[0].numpy()
    for chunk, vector in zip(chunks, ours, strict=True):
        inside = [
            i
            for i, ((start, end), special) in enumerate(
                zip(encoding.offsets, encoding.special_tokens_mask, strict=True)
            )
            if not special and start < chunk.end and end > chunk.start
        ]
        np.testing.assert_allclose(vector, states[inside].mean(axis=0), atol=1e-5)


def test_documents_beyond_the_limit_are_read_in_windows(minilm, example_docs) -> None:
    document = "\n\n".join((example_docs / name).read_text() for name in ("composting.md", "honeybees.md"))
    assert minilm.count_tokens([document])[0] > 3 * minilm.max_input_tokens
    chunks = Chunker(minilm, 64).split(document)
    late = embed_chunks(minilm, document, chunks, late=True)
    naive = embed_chunks(minilm, document, chunks)
    assert late.shape == naive.shape and np.isfinite(late).all()
    np.testing.assert_allclose(np.linalg.norm(late, axis=1), 1.0, rtol=1e-5)
    # the same content seen in context: each late vector is nearest its own chunk's naive vector
    own = np.argmax(late @ naive.T, axis=1) == np.arange(len(chunks))
    assert own.mean() >= 0.8, own
    # the honeybee half is read in a window that never saw the compost half: chunks stay on topic
    bees = minilm.embed_query("honey bees in the hive")
    bee_chunks = [i for i, chunk in enumerate(chunks) if "bee" in chunk.text.lower()]
    others = [i for i, chunk in enumerate(chunks) if "compost" in chunk.text.lower() and "bee" not in chunk.text]
    assert np.mean(late[bee_chunks] @ bees) > np.mean(late[others] @ bees) + 0.1


def test_refused_where_it_means_nothing(tmp_path, minilm, minilm_dir) -> None:
    import embedkit
    from embedkit.remote import TEIClient

    from ..conftest import write_tiny_bert

    cls_model = embedkit.load(write_tiny_bert(tmp_path / "cls", minilm_dir, pooling="cls"))
    document = AMBIGUOUS[1][0]
    chunks = Chunker(cls_model, 30).split(document)
    with pytest.raises(InputError, match="pools with cls"):
        embed_chunks(cls_model, document, chunks, late=True)
    with pytest.raises(InputError, match="token states"):
        embed_chunks(TEIClient("http://127.0.0.1:9"), document, chunks, late=True)
    with pytest.raises(InputError, match=r"chunks\[0\] does not match"):
        embed_chunks(minilm, "another text entirely", chunks, late=True)


FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"


def test_other_families_mean_pooled_or_refused() -> None:
    import embedkit

    if not (FIXTURES / "jina-embeddings-v3" / "model" / "model.safetensors").exists():
        pytest.skip("the shared fixtures are not beside the project")
    jina = embedkit.load(FIXTURES / "jina-embeddings-v3" / "model", device="cpu")
    document = "Rotary embeddings rotate pairs of dimensions.\n\nThey keep relative positions in attention. " * 3
    chunks = Chunker(jina, 24).split(document)
    passage = embed_chunks(jina, document, chunks, late=True, task="document")
    separation = embed_chunks(jina, document, chunks, late=True, task="separation")
    assert passage.shape == (len(chunks), 64) and np.isfinite(passage).all()
    assert np.sum(passage * separation, axis=1).max() < 0.999  # each task's adapter really reads the text
    qwen = embedkit.load(FIXTURES / "qwen3-embedding" / "model", device="cpu")
    with pytest.raises(InputError, match="pools with lasttoken"):
        embed_chunks(qwen, document, Chunker(qwen, 24).split(document), late=True)
