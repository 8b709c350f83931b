"""Chunks fit the model's budget under its real tokenizer, point back into the source exactly, cover it,
overlap as configured, and come out the same every time: property tests over random text."""

from __future__ import annotations

import string
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedkit.chunking import STRATEGIES, Chunk, Chunker, default_chunker, embed_chunks
from embedkit.errors import InputError

from ..conftest import EXAMPLE_DOCS


def check(chunker: Chunker, count, text: str) -> list[Chunk]:
    """Every invariant a chunking must keep; `count` is the real tokenizer's count of a text."""
    chunks = chunker.split(text)
    assert chunker.split(text) == chunks  # deterministic
    covered = [False] * len(text)
    for index, chunk in enumerate(chunks):
        assert chunk.index == index
        assert text[chunk.start : chunk.end] == chunk.text and chunk.text == chunk.text.strip()
        assert chunk.embedding_text == chunk.context + chunk.text
        assert chunk.token_count == count(chunk.embedding_text) <= chunker.budget  # the heading context counts
        if not chunk.headings or not chunker.heading_context:
            assert chunk.context == ""
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
def count(minilm):
    return lambda text: minilm.count_tokens([text])[0]


MARKDOWN_BITS = ["# ", "## ", "### ", "\n", "\n\n", "- ", "* ", "`", "```\n", "1. ", "> ", "**", "[link](x)", ". "]
CJK = "東京は日本の首都です人口非常多い。！？；中文字符测试한국어テキスト"  # noqa: RUF001 - fullwidth punctuation on purpose
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
def test_random_text_and_markdown(minilm, count, text: str, max_tokens: int, overlap: int, strategy: str) -> None:
    chunker = Chunker(minilm, max_tokens, overlap_tokens=min(overlap, max_tokens - 3), strategy=strategy)  # type: ignore[arg-type]
    check(chunker, count, text)


RST_BITS = ["\n\n", "\n", "=====\n", "-----\n", "~~\n", "Title\n", " Title\n", "\r\n", "\r\n\r\n", "## ", "```\r\n"]
sectioned = st.lists(
    st.one_of(st.text(alphabet=ALPHABET, min_size=1, max_size=30), st.sampled_from(RST_BITS + MARKDOWN_BITS)),
    max_size=60,
).map("".join)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=sectioned,
    max_tokens=st.integers(8, 64),
    overlap=st.integers(0, 12),
    strategy=st.sampled_from(["rst", "markdown"]),
    heading_context=st.booleans(),
)
def test_random_rst_markdown_and_crlf(
    minilm, count, text: str, max_tokens: int, overlap: int, strategy: str, heading_context: bool
) -> None:
    options = dict(overlap_tokens=min(overlap, max_tokens - 3), heading_context=heading_context)
    fixed = check(Chunker(minilm, max_tokens, strategy=strategy, **options), count, text)  # type: ignore[arg-type]
    assert Chunker(minilm, max_tokens, **options).split(text, strategy=strategy) == fixed  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=code, max_tokens=st.integers(10, 48), overlap=st.integers(0, 6))
def test_random_code(minilm, count, text: str, max_tokens: int, overlap: int) -> None:
    check(Chunker(minilm, max_tokens, overlap_tokens=overlap, strategy="code"), count, text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=CJK, min_size=1, max_size=400), max_tokens=st.integers(8, 40), overlap=st.integers(0, 5))
def test_text_without_spaces(minilm, count, text: str, max_tokens: int, overlap: int) -> None:
    chunks = check(Chunker(minilm, max_tokens, overlap_tokens=overlap), count, text)
    if count(text) > max_tokens - 2:
        assert len(chunks) > 1


def test_another_tokenizer_family(count) -> None:
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


MANUAL = (
    "# Guide\n\nThis guide explains how to install and use the tool on every platform we support.\n\n"
    "## Install\n\nRun pip install in a fresh virtual environment, then check the version it reports.\n\n"
    "```\n# not a heading\n```\n\n"
    "### From source\n\nClone the repository, build the wheel yourself and install the file it makes.\n\n"
    "## Use\n\nCall it.\n"
)


def only_headings(text: str) -> bool:
    return all(line.lstrip().startswith("#") for line in text.splitlines() if line.strip())


def test_markdown_heading_paths_and_sections(minilm, count) -> None:
    chunks = check(Chunker(minilm, 40), count, MANUAL)
    by_text = {chunk.text.split("\n")[0]: chunk.headings for chunk in chunks}
    assert by_text == {
        "# Guide": ("Guide",),
        "## Install": ("Guide", "Install"),
        # "## Use" is too small to stand alone: it shares the chunk of the section before it
        "### From source": ("Guide", "Install", "From source"),
    }
    assert chunks[2].text.endswith("## Use\n\nCall it.")
    assert "# not a heading" in chunks[1].text
    assert chunks[1].metadata["headings"] == ["Guide", "Install"]


def test_example_docs_pack_paragraphs(minilm, count, example_docs) -> None:
    for path in sorted(example_docs.glob("*.md")):
        text = path.read_text()
        chunks = check(Chunker(minilm, 64, overlap_tokens=8), count, text)
        assert chunks[0].text.startswith("# ")
        assert all(len(chunk.headings) >= 1 for chunk in chunks)
        overlapping = sum(after.start < before.end for before, after in pairwise(chunks))
        assert overlapping >= (len(chunks) - 1) // 2, path.name  # overlap really happens


def test_budget_leaves_room_for_special_tokens_and_the_prompt(minilm, tmp_path) -> None:
    assert Chunker(minilm).budget == minilm.max_input_tokens - 2  # [CLS] and [SEP]
    with pytest.raises(InputError, match="exceeds the model's input limit of 256"):
        Chunker(minilm, max_tokens=1000)
    with pytest.raises(InputError, match="overlap_tokens=30 must be smaller"):
        Chunker(minilm, 32, overlap_tokens=30)
    with pytest.raises(InputError, match="strategy="):
        Chunker(minilm, 32, strategy="html")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="max_tokens is required"):
        Chunker(minilm.tokenizer)
    with pytest.raises(InputError, match=r"needs a tokenizers.Tokenizer"):
        Chunker(object(), 10)


def test_default_chunker_is_model_aware(minilm) -> None:
    chunker = default_chunker(minilm)
    assert (chunker.max_tokens, chunker.overlap_tokens) == (256, 32)
    assert default_chunker(minilm, max_tokens=100, overlap_tokens=0).settings["overlap_tokens"] == 0


def test_prompt_counts_against_the_budget(tmp_path, minilm_dir) -> None:
    import embedkit

    from ..conftest import write_tiny_bert

    model = embedkit.load(write_tiny_bert(tmp_path / "m", minilm_dir, prompts={"query": "search query: "}))
    plain, prompted = Chunker(model, 64, task=None), Chunker(model, 64, task="query")
    assert plain.budget - prompted.budget == len(model.tokenizer.encode("search query:", add_special_tokens=False).ids)


# -- sections: a heading never stands alone, small sections share a chunk ---------------------------------


def test_a_heading_only_section_joins_the_content_after_it(minilm, count) -> None:
    chunks = check(Chunker(minilm, 64), count, "# Title\n\n## Intro\ntext")
    assert [(c.text, c.headings, c.context) for c in chunks] == [
        ("# Title\n\n## Intro\ntext", ("Title", "Intro"), "")  # headings: where the content starts
    ]


def test_headings_stay_with_content_when_the_section_is_split(minilm, count) -> None:
    # a heading followed directly by sub-headings, then a section far over the budget
    text = "# Guide\n## Install\n### Linux\n\n" + "\n\n".join(f"Step {i}: run the installer again." for i in range(30))
    chunks = check(Chunker(minilm, 32), count, text)
    assert len(chunks) > 3
    assert chunks[0].text.startswith("# Guide\n## Install\n### Linux\n\nStep 0")
    assert not any(only_headings(chunk.text) for chunk in chunks)
    assert {chunk.headings for chunk in chunks} == {("Guide", "Install", "Linux")}


def test_small_sections_merge_greedily_up_to_the_budget(minilm, count) -> None:
    sections = [f"## Part {i}\n\nPart {i} says one short thing." for i in range(12)]
    text = "# Book\n\n" + "\n\n".join(sections)
    chunker = Chunker(minilm, 48)
    chunks = check(chunker, count, text)
    assert 1 < len(chunks) < len(sections) / 2
    for before, after in pairwise(chunks):
        # greedy: the next section would not have fitted
        assert count(before.context + text[before.start : after.end]) > chunker.budget
    assert chunks[0].headings == ("Book", "Part 0") and chunks[0].context == ""
    assert chunks[1].text.startswith("## Part") and chunks[1].context == "Book\n\n"
    assert chunks[1].headings == ("Book", chunks[1].text.split("\n")[0][3:])


def test_example_docs_have_no_heading_only_chunks(minilm) -> None:
    chunker = default_chunker(minilm)
    for path in sorted(EXAMPLE_DOCS.glob("*.md")):
        chunks = chunker.split(path.read_text())
        assert not any(only_headings(chunk.text) for chunk in chunks), path.name


# -- heading context: embedded, counted, never part of the span ---------------------------------------------


def test_heading_context_is_embedded_and_counted_but_not_in_the_span(minilm, count) -> None:
    body = " ".join(f"Linux step {i} installs the package." for i in range(40))
    text = "# Guide\n\nIntro.\n\n## Install\n\nPick your system.\n\n### Linux\n\n" + body
    chunker = Chunker(minilm, 40)
    chunks = check(chunker, count, text)
    linux = [chunk for chunk in chunks if chunk.headings == ("Guide", "Install", "Linux")]
    assert len(linux) > 2
    assert linux[0].text.startswith("### Linux") and linux[0].context == "Guide > Install\n\n"
    for chunk in linux[1:]:
        assert chunk.context == "Guide > Install > Linux\n\n"
        assert chunk.embedding_text == "Guide > Install > Linux\n\n" + text[chunk.start : chunk.end]
        assert chunk.token_count == count(chunk.embedding_text) <= chunker.budget
    vectors = embed_chunks(minilm, text, linux[1:3])
    assert np.allclose(vectors, minilm.embed([chunk.embedding_text for chunk in linux[1:3]]), atol=1e-6)


def test_heading_context_off_and_plain_text(minilm, count) -> None:
    body = " ".join(f"Linux step {i} installs the package." for i in range(40))
    text = "# Guide\n\n## Install\n\n" + body
    on, off = Chunker(minilm, 40), Chunker(minilm, 40, heading_context=False)
    assert on.settings["heading_context"] is True and off.settings["heading_context"] is False
    assert on.settings != off.settings  # content hashes change with the option
    plain = check(off, count, text)
    assert all(chunk.context == "" and chunk.token_count == count(chunk.text) for chunk in plain)
    assert plain[-1].headings == ("Guide", "Install")
    # the context takes its tokens from the budget: the texts under it are shorter
    room = on.budget - count("Guide > Install\n\n")
    assert max(count(chunk.text) for chunk in check(on, count, text)[1:]) <= room < max(count(c.text) for c in plain)
    assert all(chunk.context == "" for chunk in check(on, count, body))  # text without headings
    with pytest.raises(InputError, match="heading_context must be True or False"):
        Chunker(minilm, 40, heading_context="yes")  # type: ignore[arg-type]


def test_a_heading_path_that_would_crowd_out_the_text_is_left_out(minilm, count) -> None:
    title = " ".join(["word"] * 12)
    text = f"# {title}\n\n" + "Some text here. " * 20
    chunker = Chunker(minilm, 16)  # budget 14: a 14-token context would leave no room
    chunks = check(chunker, count, text)
    assert chunks[1].context == ""


# -- strategy per document, reStructuredText ---------------------------------------------------------------


def test_split_takes_a_strategy_per_document(minilm, count) -> None:
    text = "# not a heading in a .txt file\n\nplain text. " * 3
    auto = Chunker(minilm, 64)
    assert check(auto, count, text)[0].headings == ("not a heading in a .txt file",)  # auto sees markdown
    as_text = auto.split(text, strategy="text")
    assert [(c.text, c.headings, c.context) for c in as_text] == [(text.strip(), (), "")]
    # a chunker built with a strategy other than auto keeps it
    assert Chunker(minilm, 64, strategy="markdown").split(text, strategy="text")[0].headings != ()
    assert auto.split(text, strategy="auto") == auto.split(text)
    with pytest.raises(InputError, match="strategy='html'; choose one of auto, markdown, text, code, rst"):
        auto.split(text, strategy="html")  # type: ignore[arg-type]
    assert "rst" in STRATEGIES


RST = """\
=========
 Manual
=========

Preface text.

Install
=======

Run the installer.

Linux
-----

Use the package manager.

----------

A transition above is not a heading.

Too long a title
----

Windows
-------

Run setup.exe.

   Indented
   --------

Usage
=====

Call it.
"""


def test_rst_sections_and_heading_levels(minilm, count) -> None:
    chunks = check(Chunker(minilm, 24, strategy="rst"), count, RST)
    by_first_line = {chunk.text.splitlines()[0].strip(): chunk.headings for chunk in chunks}
    # styles rank by first appearance: ===/=== overlined first, then === underlined, then ---
    assert by_first_line["========="] == ("Manual",)
    assert by_first_line["Install"] == ("Manual", "Install")
    assert by_first_line["Linux"] == ("Manual", "Install", "Linux")
    assert by_first_line["Windows"] == ("Manual", "Install", "Windows")
    assert by_first_line["Usage"] == ("Manual", "Usage")
    assert not any("Too long" in title or "Indented" in title for c in chunks for title in c.headings)
    transition = next(chunk for chunk in chunks if "A transition" in chunk.text)
    assert transition.headings == ("Manual", "Install", "Linux")


def test_rst_heading_only_sections_join_their_content(minilm, count) -> None:
    text = "Title\n=====\n\nSub\n---\n\ntext"
    chunks = check(Chunker(minilm, 64), count, text)  # auto: no markdown heading, so plain text
    assert chunks[0].headings == ()
    chunks = Chunker(minilm, 64).split(text, strategy="rst")
    assert [(c.text, c.headings, c.context) for c in chunks] == [(text, ("Title", "Sub"), "")]


# -- input faults ------------------------------------------------------------------------------------------


def test_a_lone_surrogate_is_an_input_error_naming_its_position(minilm) -> None:
    chunker = Chunker(minilm, 64)
    with pytest.raises(InputError, match=r"text\[4\] is '\\ud800', a lone surrogate"):
        chunker.split("ok: \ud800 (a truncated emoji)")
    text = "# Title\n\n" + "fine words. " * 50 + "\n\n## Next\n\nbroken \udc00 here"
    with pytest.raises(InputError, match=rf"text\[{text.index(chr(0xDC00))}\] is '\\udc00'"):
        chunker.split(text)


def test_default_chunker_rejects_zero_and_negative_sizes(minilm) -> None:
    with pytest.raises(InputError, match="max_tokens must be an int >= 1, got 0"):
        default_chunker(minilm, max_tokens=0)
    with pytest.raises(InputError, match="max_tokens must be an int >= 1, got -5"):
        default_chunker(minilm, max_tokens=-5)
    with pytest.raises(InputError, match="overlap_tokens must be an int >= 0, got -1"):
        default_chunker(minilm, overlap_tokens=-1)
    assert default_chunker(minilm, max_tokens=None).max_tokens == 256  # None, not 0, means the default


def test_crlf_line_endings_split_like_lf(minilm, count) -> None:
    lf = MANUAL + "\n## Spare\n\n" + "More words for a longer section. " * 12 + "\n\n```\n# code\n\n# more\n```\n"
    crlf = lf.replace("\n", "\r\n")
    cases = (
        ("markdown", lf, crlf, {"Guide", "Install", "From source", "Spare"}),
        ("rst", RST, RST.replace("\n", "\r\n"), {"Manual", "Install", "Linux", "Windows"}),
    )
    for strategy, text_lf, text_crlf, titles in cases:
        chunker = Chunker(minilm, 40, strategy=strategy)  # type: ignore[arg-type]
        want = check(chunker, count, text_lf)
        got = check(chunker, count, text_crlf)
        assert [c.text.replace("\r\n", "\n") for c in got] == [c.text for c in want]
        assert [(c.headings, c.context) for c in got] == [(c.headings, c.context) for c in want]
        assert not any("\r" in title for c in got for title in c.headings)
        assert {title for c in got for title in c.headings} == titles  # none from the fenced "# code"
    # blank-line paragraphs are cut points with CRLF too: the paragraphs of one long section
    paragraphs = "\r\n\r\n".join(f"Paragraph {i} has a few words in it." for i in range(8))
    chunks = check(Chunker(minilm, 24, strategy="text"), count, paragraphs)
    assert all(chunk.text.startswith("Paragraph") and chunk.text.endswith(".") for chunk in chunks)


# -- tokenizers and memory ---------------------------------------------------------------------------------


def test_a_tokenizer_file_that_pads_and_truncates(minilm, minilm_dir, count) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))  # pads and truncates to 128
    assert tokenizer.padding and tokenizer.truncation
    chunker = Chunker(tokenizer, 256)
    assert chunker.budget == 254
    chunks = check(chunker, count, "word " * 600)
    assert max(chunk.token_count for chunk in chunks) > 128
    assert tokenizer.padding and tokenizer.truncation  # the caller's tokenizer is left as it was


MEMORY_PROBE = """
import sys
from tokenizers import Tokenizer
from embedkit.chunking import Chunker

def kib(key):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key + ":"))

chunker = Chunker(Tokenizer.from_file(sys.argv[1]), 256, overlap_tokens=32)
doc = "# Notes {i}\\n\\nSome words about item {i}, with a [link](x) and `code`.\\n\\n" + "More prose here. " * 40
text = "\\n\\n".join(doc.format(i=i) for i in range(2_000_000 // len(doc)))
chunker.split(text[:5000])
before = kib("VmRSS")
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # VmHWM, the peak RSS, starts again from here
chunks = chunker.split(text)
print(len(text), kib("VmHWM") - before)
"""


def test_peak_memory_of_a_large_document_stays_proportional(minilm_dir) -> None:
    """Chunking 2 MB once took 160x its size in RAM (one Encoding of the whole text); now a small multiple."""
    import os
    import subprocess
    import sys

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    command = [sys.executable, "-c", MEMORY_PROBE, str(minilm_dir / "tokenizer.json")]
    size, growth_kib = map(int, subprocess.run(command, check=True, capture_output=True, text=True).stdout.split())
    assert growth_kib * 1024 < 40 * size  # generous: about 8x measured; the whole-text Encoding took 160x
