"""all-MiniLM-L6-v2 (real weights): embedkit equals sentence-transformers, normalised and raw."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from embedkit.errors import InputError, UnknownTaskError

LONG = (
    "Embedding models map text to vectors so that texts with similar meaning land close together. "
    "This paragraph is deliberately long so that it runs past the model's 256-token limit and must be "
    "truncated in exactly the same way by both implementations. "
) * 8

TEXTS = [
    # short
    "hi",
    "Hello, world!",
    "cat",
    "Paris is the capital of France.",
    "What time is it?",
    "The quick brown fox jumps over the lazy dog.",
    "I love pizza.",
    "OK",
    "Yes.",
    "no",
    # sentences and paragraphs
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "How do I reset my password if I no longer have access to my email account?",
    "Black holes are regions of spacetime where gravity is so strong that nothing can escape.",
    "The mitochondria is the powerhouse of the cell, producing ATP through respiration.",
    "Marathon runners taper their training in the final weeks before the race.",
    "A balanced budget sets aside savings before discretionary spending.",
    "Honeybees communicate the location of flowers through the waggle dance.",
    "Roman aqueducts used gentle gradients to carry water over long distances.",
    "Git rebase rewrites history by replaying commits on top of another base.",
    "Coffee should be brewed with water just off the boil for the best extraction.",
    # long, past 256 tokens
    LONG,
    LONG.upper(),
    " ".join(str(i) for i in range(400)),
    "word " * 600,
    # non-English
    "Le chat est assis sur le tapis.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El conocimiento es poder.",
    "Москва — столица России.",
    "東京は日本の首都です。",
    "北京是中国的首都。",
    "서울은 한국의 수도입니다.",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "Ελληνικά γράμματα: αβγδε",
    "naïve café résumé façade",
    "Zürich, Köln und München",
    # emoji and symbols
    "I love it! 😍🎉",
    "🚀🚀🚀",
    "Weather today: ☀️ then 🌧️",
    "👍",
    "Price: €100 (≈ $108) — 50% off!",
    # code
    "def add(a, b):\n    return a + b",
    "SELECT id, name FROM users WHERE age > 30;",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    '<div class="x">Hello</div>',
    '{"key": "value", "list": [1, 2, 3]}',
    "git commit -m 'fix: handle empty input'",
    "import numpy as np\nx = np.zeros((3, 3))",
    # whitespace-only and odd spacing
    " ",
    "   ",
    "\n",
    "\t\n  ",
    "  leading and trailing spaces  ",
    "multiple     internal     spaces",
    "line one\nline two\n\nline four",
]


def test_corpus_is_varied() -> None:
    assert len(TEXTS) >= 50


def test_normalised_vectors_equal_sentence_transformers(minilm, st_minilm) -> None:
    ours = minilm.embed(TEXTS)
    reference = st_minilm.encode(TEXTS, normalize_embeddings=True, batch_size=16)
    cosines = (ours * reference).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 384)
    assert cosines.min() >= 0.99999, [TEXTS[i][:30] for i in np.where(cosines < 0.99999)[0]]
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_raw_vectors_equal_sentence_transformers_without_normalize(minilm, st_minilm) -> None:
    ours = minilm.embed(TEXTS, normalize=False)
    reference = st_minilm.encode(TEXTS, normalize_embeddings=False, batch_size=16)
    # the model's modules.json has a Normalize step; drop it to get the raw pooled vector
    from sentence_transformers import SentenceTransformer

    raw_pipeline = SentenceTransformer(modules=[st_minilm[0], st_minilm[1]], device="cpu")
    unnormalised = raw_pipeline.encode(TEXTS, batch_size=16)
    assert np.abs(ours - unnormalised).max() < 1e-5
    assert not np.allclose(np.linalg.norm(ours, axis=1), 1.0)
    assert np.abs(reference - unnormalised / np.linalg.norm(unnormalised, axis=1, keepdims=True)).max() < 1e-5


def test_truncation_is_counted_and_logged(minilm, caplog: pytest.LogCaptureFixture) -> None:
    before = minilm.truncated_count
    with caplog.at_level(logging.WARNING, logger="embedkit.local"):
        minilm.embed(["short", LONG])
    assert minilm.truncated_count == before + 1
    assert "1 of 2 texts were truncated to 256 tokens (indices 1)" in caplog.text
    with pytest.raises(InputError, match=r"texts\[1\] is \d+ tokens long, over this model's limit of 256"):
        minilm.embed(["short", LONG], truncate=False)


def test_matryoshka_truncates_then_normalises(minilm) -> None:
    full = minilm.embed(TEXTS[:5], normalize=False)
    small = minilm.embed(TEXTS[:5], dimensions=64)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(small, expected, atol=1e-6)
    with pytest.raises(InputError, match=r"dimensions=385 is out of range: this model gives 1..384"):
        minilm.embed(["x"], dimensions=385)


def test_contract_properties_and_shortcuts(minilm) -> None:
    assert minilm.dimension == 384 and minilm.max_input_tokens == 256
    assert minilm.tasks == ["query", "document"]
    assert minilm.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    query = minilm.embed_query("what is x?")
    assert query.shape == (384,) and query.dtype == np.float32
    np.testing.assert_allclose(query, minilm.embed(["what is x?"])[0], atol=1e-6)
    docs = minilm.embed_documents(["a", "b"])
    assert docs.shape == (2, 384)
    with pytest.raises(UnknownTaskError, match="valid tasks for this model: 'query', 'document'"):
        minilm.embed(["x"], task="summarise")


@pytest.mark.parametrize(
    ("texts", "message"),
    [([], "texts is empty"), (["fine", 7], r"texts\[1\] is int"), (["fine", ""], r"texts\[1\] is an empty string")],
)
def test_bad_input_is_named(minilm, texts: list, message: str) -> None:
    with pytest.raises(InputError, match=message):
        minilm.embed(texts)


def test_prompts_from_sentence_transformers_config(tmp_path, minilm_dir) -> None:
    import embedkit

    from ..conftest import write_tiny_bert

    model_dir = write_tiny_bert(tmp_path / "e5", minilm_dir, prompts={"query": "query: ", "passage": "passage: "})
    embedder = embedkit.load(model_dir)
    np.testing.assert_allclose(embedder.embed(["x"], task="query"), embedder.embed(["query: x"]), atol=1e-6)
    np.testing.assert_allclose(embedder.embed(["x"], task="document"), embedder.embed(["passage: x"]), atol=1e-6)
    assert embedder.tasks == ["query", "document", "passage"]
