"""Chunks fit the model's budget under its real tokenizer, point back into the source exactly, cover it,
overlap as configured, and come out the same every time: property tests over random text."""

from __future__ import annotations

import string
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedkit.chunking import Chunk, Chunker, default_chunker
from embedkit.errors import InputError


def check(chunker: Chunker, count, text: str) -> list[Chunk]:  # noqa: ANN001
    """Every invariant a chunking must keep; `count` is the real tokenizer's count of a text."""
    chunks = chunker.split(text)
    assert chunker.split(text) == chunks  # deterministic
    covered = [False] * len(text)
    for index, chunk in enumerate(chunks):
        assert chunk.index == index
        assert text[chunk.start : chunk.end] == chunk.text and chunk.text == chunk.text.strip()
        assert chunk.token_count == count(chunk.text) <= chunker.budget
        for position in range(chunk.start, chunk.end):
            covered[position] = True
    # full coverage: only whitespace lies outside every chunk
    assert all(covered[i] or text[i].isspace() for i in range(len(text)))
    for before, after in pairwise(chunks):
        assert before.start < after.start and before.end < after.end  # progress, in order
        if after.start < before.end:  # the repeated text is within the configured overlap
            assert count(text[after.start : before.end]) <= chunker.overlap_tokens
        else:
            assert text[before.end : after.start].strip() == "" or chunker.strategy == "markdown"
    return chunks


@pytest.fixture(scope="module")
def count(minilm):  # noqa: ANN001
    return lambda text: minilm.count_tokens([text])[0]


MARKDOWN_BITS = ["# ", "## ", "### ", "\n", "\n\n", "- ", "* ", "`", "```\n", "1. ", "> ", "**", "[link](x)", ". "]
CJK = "東京は日本の首都です人口非常多い。！？；中文字符测试한국어テキスト"
ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \t\n" + CJK + "éüßçñø" + "😀🚀"

texts = st.lists(
    st.one_of(st.text(alphabet=ALPHABET, min_size=1, max_size=40), st.sampled_from(MARKDOWN_BITS)), max_size=60
).map("".join)
code = st.lists(
    st.sampled_from(
        [
            "def f(x):\n",
            "    return x\n",
            "\n",
            "class A:\n",
            "    pass\n",
            "import os\n",
            "x = [1, 2, 3]\n",
            "# note\n",
        ]
    ),
    max_size=80,
).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=texts,
    max_tokens=st.integers(8, 64),
    overlap=st.integers(0, 12),
    strategy=st.sampled_from(["auto", "text", "markdown"]),
)
def test_random_text_and_markdown(minilm, count, text: str, max_tokens: int, overlap: int, strategy: str) -> None:  # noqa: ANN001
    chunker = Chunker(minilm, max_tokens, overlap_tokens=min(overlap, max_tokens - 3), strategy=strategy)  # type: ignore[arg-type]
    check(chunker, count, text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=code, max_tokens=st.integers(10, 48), overlap=st.integers(0, 6))
def test_random_code(minilm, count, text: str, max_tokens: int, overlap: int) -> None:  # noqa: ANN001
    check(Chunker(minilm, max_tokens, overlap_tokens=overlap, strategy="code"), count, text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=CJK, min_size=1, max_size=400), max_tokens=st.integers(8, 40), overlap=st.integers(0, 5))
def test_text_without_spaces(minilm, count, text: str, max_tokens: int, overlap: int) -> None:  # noqa: ANN001
    chunks = check(Chunker(minilm, max_tokens, overlap_tokens=overlap), count, text)
    if count(text) > max_tokens - 2:
        assert len(chunks) > 1


def test_another_tokenizer_family(count) -> None:  # noqa: ANN001
    """XLM-R's SentencePiece tokenizer (jina-embeddings-v3's) reports offsets differently from WordPiece."""
    from pathlib import Path

    from tokenizers import Tokenizer

    path = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "jina-embeddings-v3" / "model"
    if not (path / "tokenizer.json").exists():
        pytest.skip("the jina-embeddings-v3 fixture is not beside the project")
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    chunker = Chunker(tokenizer, 24, overlap_tokens=4)
    text = "# Título\n\nÜber die Brücke gehen wir. 東京は日本の首都です。" * 8 + "\n\n## Zweiter\n\n" + "wort " * 80
    chunks = check(chunker, lambda t: len(tokenizer.encode(t, add_special_tokens=False).ids), text)
    assert chunks[-1].headings == ("Título", "Zweiter")


def test_markdown_heading_paths_and_sections(minilm, count) -> None:  # noqa: ANN001
    text = (
        "# Guide\n\nIntro text.\n\n## Install\n\nRun pip.\n\n```\n# not a heading\n```\n\n"
        "### From source\n\nClone it.\n\n## Use\n\nCall it.\n"
    )
    chunks = check(Chunker(minilm, 60), count, text)
    by_text = {chunk.text.split("\n")[0]: chunk.headings for chunk in chunks}
    assert by_text["# Guide"] == ("Guide",)
    assert by_text["## Install"] == ("Guide", "Install")
    assert by_text["### From source"] == ("Guide", "Install", "From source")
    assert by_text["## Use"] == ("Guide", "Use")
    assert any("# not a heading" in chunk.text and chunk.headings == ("Guide", "Install") for chunk in chunks)
    assert chunks[1].metadata["headings"] == ["Guide", "Install"]


def test_example_docs_pack_paragraphs(minilm, count, example_docs) -> None:  # noqa: ANN001
    for path in sorted(example_docs.glob("*.md")):
        text = path.read_text()
        chunks = check(Chunker(minilm, 64, overlap_tokens=8), count, text)
        assert chunks[0].text.startswith("# ")
        assert all(len(chunk.headings) >= 1 for chunk in chunks)
        overlapping = sum(after.start < before.end for before, after in pairwise(chunks))
        assert overlapping >= (len(chunks) - 1) // 2, path.name  # overlap really happens


def test_budget_leaves_room_for_special_tokens_and_the_prompt(minilm, tmp_path) -> None:  # noqa: ANN001
    assert Chunker(minilm).budget == minilm.max_input_tokens - 2  # [CLS] and [SEP]
    with pytest.raises(InputError, match="exceeds the model's input limit of 256"):
        Chunker(minilm, max_tokens=1000)
    with pytest.raises(InputError, match="overlap_tokens=30 must be smaller"):
        Chunker(minilm, 32, overlap_tokens=30)
    with pytest.raises(InputError, match="strategy="):
        Chunker(minilm, 32, strategy="html")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="max_tokens is required"):
        Chunker(minilm.tokenizer)
    with pytest.raises(InputError, match="needs a tokenizers.Tokenizer"):
        Chunker(object(), 10)


def test_default_chunker_is_model_aware(minilm) -> None:  # noqa: ANN001
    chunker = default_chunker(minilm)
    assert (chunker.max_tokens, chunker.overlap_tokens) == (256, 32)
    assert default_chunker(minilm, max_tokens=100, overlap_tokens=0).settings["overlap_tokens"] == 0


def test_prompt_counts_against_the_budget(tmp_path, minilm_dir) -> None:  # noqa: ANN001
    import embedkit

    from ..conftest import write_tiny_bert

    model = embedkit.load(write_tiny_bert(tmp_path / "m", minilm_dir, prompts={"query": "search query: "}))
    plain, prompted = Chunker(model, 64, task=None), Chunker(model, 64, task="query")
    assert plain.budget - prompted.budget == len(model.tokenizer.encode("search query:", add_special_tokens=False).ids)
