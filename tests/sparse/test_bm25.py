"""BM25Encoder against fastembed's `Qdrant/bm25`, the vectors langchain-qdrant's FastEmbedSparse writes and reads.

What is compared: for every text below, `BM25Encoder().embed_documents([text])` with
`SparseTextEmbedding("Qdrant/bm25").embed([text])`, and `BM25Encoder().embed_query(text)` with
`SparseTextEmbedding("Qdrant/bm25").query_embed(text)`: the same set of indices, and each value within 1e-6
(fastembed computes the weights in float64, Qdrant Edge in float32). The texts: hand-made cases (prose,
punctuation, numbers, accents and other scripts, uppercase, repeats, snake_case names, over-long tokens, a
text of stopwords only and an empty one, which give empty vectors, a 20,000-word text) and the docstrings
of a dozen standard-library modules (natural English, with code names in it); with the default parameters
and with k=0.9, b=0.4, avg_len=100. For the 16 other languages both accept, a sentence each, word by word:
fastembed with no stopword file (it then filters none) and ours (Qdrant Edge's list), so the stemmer and
the token ids are compared on every word ours keeps.

fastembed runs offline: its Bm25 reads `<model folder>/<language>.txt` (one stopword a line) and nothing
else, and `specific_model_path` makes it use that folder as the model without asking the hub. The folder is
written here from tests/sparse/data/english_stopwords.txt: NLTK's English list (179 words), which is what
the Qdrant/bm25 repository's english.txt holds as far as can be told offline (the hub is out of reach, so
not compared byte for byte) and what Qdrant's own English stopwords are (its source, stop_words/english.rs).
Qdrant Edge has its list built in; `test_stopword_lists_agree` runs the 179 words and scikit-learn's 318
English stopwords (a superset of most lists) one by one through both, so a word one list has and the
other lacks fails by name. Where a copy of NLTK's lists is installed (llama-index-core bundles one),
`test_stopwords_against_nltk_lists` does the same for all 17 languages with fastembed reading NLTK's file.
"""

# ruff: noqa: RUF001 (texts in Greek, Cyrillic and Turkish letters on purpose)

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from embedkit.errors import InputError
from embedkit.sparse import BM25Encoder, SparseEncoder, SparseVector
from embedkit.sparse.bm25 import fastembed_tokens, supported_languages

STOPWORDS = Path(__file__).parent / "data" / "english_stopwords.txt"

TEXTS = {
    "prose": "The quick brown foxes were jumping over the lazy dogs while their owners watched from the porch.",
    "punctuation": "Wait... what?! (Really) -- yes; \"quoted\" 'single' [brackets] {braces} <angle> a/b\\c @user #tag",
    "contractions": "Don't stop: it's John's car; they're here. O'Neill's rock-and-roll e-mail isn't theirs.",
    "numbers": "Version 3.14.15 released on 2024-05-06 costs $1,000.50 (approx. 20%); 3rd of 21st, 1e10 0042",
    "accents": "Café naïve résumé Ünïcödé ÅNGSTRÖM façade jalapeño crème brûlée São Paulo Zürich",
    "scripts": "Ελληνικά κείμενα, кириллица текст, العربية, עברית, 日本語のテキスト, 中文文本, 한국어 문장",
    "special letters": "İstanbul ı I i ﬁnance ﬂow straße STRASSE Ⅻ ½ ² ٣ ① emoji 🎉 party 🙂",
    "greek capitals": "ΟΔΟΣ.ΑΘΗΝΑ ΛΟΓΟΣ, ΚΑΙ ΟΣ.Α ΣΟΦΟΣ'Σ ΤΕΛΟΣ",
    "uppercase": "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG AND RUNS AWAY FROM THE HUNTERS",
    "repeats": "run run run running runs runner ran run RUN Run, run! connection connected connecting",
    "identifiers": "snake_case_identifier foo_bar __init__ _private CamelCaseWord _ __ ___x x_ HTTPServer2",
    "long tokens": "x" * 40 + " " + "y" * 41 + " " + "é" * 40 + " " + "é" * 41 + " alert_description_unsupported_cert",
    "stopwords only": "The and of to a in is it you that he was for on are with as I his they be at",
    "empty": "",
    "whitespace": "  \n\t \u00a0\u2003 ",
    "punctuation only": "... !!! ??? --- ;;; ''' \"\"\" ()",
}
STDLIB = (
    "argparse asyncio collections csv dataclasses email.message functools http.client json logging pathlib "
    "shutil subprocess tarfile textwrap urllib.parse"
).split()


def _long_text() -> str:
    words = TEXTS["prose"].split() + TEXTS["accents"].split() + TEXTS["repeats"].split()
    return " ".join(words[(i * 7) % len(words)] for i in range(20_000))


def _docstrings() -> list[str]:
    texts: list[str] = []
    for name in STDLIB:
        module = importlib.import_module(name)
        members = [module, *(member for _, member in sorted(vars(module).items()))]
        for member in members:
            if member is not module and getattr(member, "__module__", None) != module.__name__:
                continue  # a name imported from elsewhere
            doc = inspect.getdoc(member)
            if doc and len(doc) > 40 and doc not in texts:
                texts.append(doc)
    return texts


CORPUS = [*TEXTS.values(), _long_text(), *_docstrings()]


@pytest.fixture(scope="module")
def fastembed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qdrant/bm25 as fastembed reads it from disk: english.txt is the only file its Bm25 opens."""
    folder = tmp_path_factory.mktemp("qdrant-bm25")
    shutil.copy(STOPWORDS, folder / "english.txt")
    return folder


def fastembed_model(folder: Path, **params: Any) -> Any:
    # the tests without fastembed (bad input, pickling, Qdrant Edge) still run where it is missing
    fastembed = pytest.importorskip("fastembed", reason="fastembed is in the dev extra: pip install -e '.[dev]'")
    return fastembed.SparseTextEmbedding(
        "Qdrant/bm25", specific_model_path=str(folder), local_files_only=True, cache_dir=str(folder), **params
    )


@pytest.fixture(scope="module", autouse=True)
def no_network() -> Iterator[None]:
    """fastembed must not reach the hub: any connection attempt fails the test that makes it."""
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


def as_dict(indices: Any, values: Any) -> dict[int, float]:
    return {int(index): float(value) for index, value in zip(indices, values, strict=True)}


def assert_same(ours: SparseVector, theirs: Any, text: str) -> None:
    expected = as_dict(theirs.indices, theirs.values)
    got = ours.as_dict()
    where = f"text {text[:60]!r}"
    assert set(got) == set(expected), f"{where}: indices only ours {set(got) - set(expected)}, only fastembed's " + (
        f"{set(expected) - set(got)}"
    )
    worst = max((abs(got[index] - expected[index]) for index in expected), default=0.0)
    assert worst < 1e-6, f"{where}: values differ by {worst}"


@pytest.mark.parametrize("params", [{}, {"k": 0.9, "b": 0.4, "avg_len": 100.0}], ids=["defaults", "k0.9-b0.4-len100"])
def test_documents_and_queries_equal_fastembed(fastembed_dir: Path, params: dict[str, float]) -> None:
    ours = BM25Encoder(**params)
    theirs = fastembed_model(fastembed_dir, **params)
    documents = ours.embed_documents(CORPUS)
    for text, vector, reference in zip(CORPUS, documents, theirs.embed(CORPUS), strict=True):
        assert_same(vector, reference, text)
    for text, reference in zip(CORPUS, theirs.query_embed(CORPUS), strict=True):
        assert_same(ours.embed_query(text), reference, text)


def test_the_corpus_exercises_the_differences_that_matter(fastembed_dir: Path) -> None:
    """The comparison above is only as good as its texts: they hold long and short vectors, code names,
    and the cases that give nothing."""
    vectors = BM25Encoder().embed_documents(CORPUS)
    assert len(CORPUS) > 200
    assert max(len(vector.indices) for vector in vectors) > 100
    assert len(vectors[list(TEXTS).index("identifiers")].indices) >= 8
    for name in ("stopwords only", "empty", "whitespace", "punctuation only"):
        assert vectors[list(TEXTS).index(name)] == SparseVector([], [])
    # a repeated term weighs more than a single one, below the saturation k + 1
    repeats = vectors[list(TEXTS).index("repeats")]
    assert 1.0 < max(repeats.values) < 2.2


def test_stopword_lists_agree(fastembed_dir: Path) -> None:
    ENGLISH_STOP_WORDS = pytest.importorskip("sklearn.feature_extraction.text").ENGLISH_STOP_WORDS

    ours = BM25Encoder()
    theirs = fastembed_model(fastembed_dir)
    words = sorted({*STOPWORDS.read_text().split(), *ENGLISH_STOP_WORDS})
    differ = [
        word
        for word, reference in zip(words, theirs.embed(words), strict=True)
        if ours.embed_documents([word])[0].as_dict() != pytest.approx(as_dict(reference.indices, reference.values))
    ]
    assert differ == []
    assert all(ours.embed_query(word) == SparseVector([], []) for word in STOPWORDS.read_text().split())


def nltk_stopwords_folder() -> Path | None:
    """NLTK's stopword lists, as llama-index-core ships them (it bundles NLTK's data), when installed."""
    spec = importlib.util.find_spec("llama_index.core") if importlib.util.find_spec("llama_index") else None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "_static" / "nltk_cache" / "corpora" / "stopwords"
    return folder if (folder / "english").is_file() else None


@pytest.mark.parametrize("language", supported_languages())
def test_stopwords_against_nltk_lists(tmp_path: Path, language: str) -> None:
    """The Qdrant/bm25 repository's <language>.txt files are NLTK's lists; where a copy of NLTK's data is
    installed (llama-index-core bundles one), fastembed reading it and Qdrant Edge's built-in list give the
    same vector for every word of it. NLTK's newer English list has 19 contractions more than the 179 words
    shipped here ("he'd", "we're", ...): fastembed cuts them at the apostrophe into stopwords either way."""
    folder = nltk_stopwords_folder()
    if folder is None:
        pytest.skip("no copy of NLTK's stopword lists installed (llama-index-core bundles one)")
    shutil.copy(folder / language, tmp_path / f"{language}.txt")
    ours, theirs = BM25Encoder(language=language), fastembed_model(tmp_path, language=language)
    words = (folder / language).read_text().split()
    differ = [
        word
        for word, reference in zip(words, theirs.embed(words), strict=True)
        if set(ours.embed_documents([word])[0].indices) != {int(index) for index in reference.indices}
    ]
    assert differ == []
    if language == "english":
        assert set(STOPWORDS.read_text().split()) < set(words)


def test_vectors_are_sorted_unique_and_batch_equals_single() -> None:
    encoder = BM25Encoder()
    batch = encoder.embed_documents(CORPUS[:40])
    for text, vector in zip(CORPUS[:40], batch, strict=True):
        assert vector.indices == sorted(set(vector.indices))
        assert all(0 <= index < 2**31 for index in vector.indices)
        assert len(vector.values) == len(vector.indices)
        assert encoder.embed_documents([text]) == [vector]
        query = encoder.embed_query(text)
        assert query.indices == vector.indices and set(query.values) <= {1.0}


def test_the_tokenizer_rule() -> None:
    assert fastembed_tokens("Foo_bar, BAZ-qux! don't _ __") == ["foo_bar", "baz", "qux", "don", "t", "__"]
    assert fastembed_tokens("İx") == ["i", "x"]  # "İ".lower() is "i" + U+0307, which is not a word character
    # punctuation becomes a space before lowercasing: the sigma before it is then final
    assert fastembed_tokens("ΟΣ.Α") == ["ος", "α"] != "ΟΣ.Α".lower().split(".")
    assert fastembed_tokens("a" * 40 + " " + "b" * 41) == ["a" * 40]


def test_protocol_fingerprint_and_pickle() -> None:
    encoder = BM25Encoder(k=1.5, language="french")
    assert isinstance(encoder, SparseEncoder)
    assert (encoder.name, encoder.modifier) == ("bm25", "idf")
    fingerprint = encoder.fingerprint()
    assert {key: fingerprint[key] for key in ("kind", "k", "b", "avg_len", "language", "engine")} == {
        "kind": "bm25",
        "k": 1.5,
        "b": 0.75,
        "avg_len": 256.0,
        "language": "french",
        "engine": "qdrant-edge-py",
    }
    assert fingerprint["engine_version"][0].isdigit()
    assert BM25Encoder().fingerprint() != fingerprint
    copy = pickle.loads(pickle.dumps(encoder))
    assert copy.fingerprint() == fingerprint
    assert copy.embed_documents(["les chats mangeaient"]) == encoder.embed_documents(["les chats mangeaient"])


SENTENCES = {
    "arabic": "كان الأطفال يلعبون بسعادة في الحدائق الكبيرة خلف المنازل",
    "danish": "Børnene legede glade i de store haver bag husene",
    "dutch": "De kinderen speelden vrolijk in de tuinen achter de oude huizen",
    "finnish": "Lapset leikkivät iloisesti suurissa puutarhoissa talojen takana",
    "french": "Les enfants mangeaient des pommes délicieuses dans les jardins ensoleillés",
    "german": "Die Katzen spielten gestern fröhlich im großen Garten hinter den Häusern",
    "greek": "Τα παιδιά έπαιζαν χαρούμενα στους μεγάλους κήπους πίσω από τα σπίτια",
    "hungarian": "A gyerekek vidáman játszottak a házak mögötti nagy kertekben",
    "italian": "I ragazzi leggevano libri interessanti nelle biblioteche della città",
    "norwegian": "Barna lekte lykkelig i de store hagene bak husene",
    "portuguese": "As crianças brincavam alegremente nos parques durante as férias de verão",
    "romanian": "Copiii se jucau veseli în grădinile mari din spatele caselor",
    "russian": "Дети быстро бегали по широким улицам старого города",
    "spanish": "Los niños corrían rápidamente por las calles estrechas de la ciudad antigua",
    "swedish": "Barnen lekte glatt i de stora trädgårdarna bakom husen",
    "turkish": "Çocuklar evlerin arkasındaki büyük bahçelerde neşeyle oynadılar",
}


@pytest.mark.parametrize("language", sorted(SENTENCES))
def test_other_languages_stem_and_hash_as_fastembed(tmp_path: Path, language: str) -> None:
    """Without a <language>.txt fastembed filters no stopwords, Qdrant Edge filters its own list: word by word,
    each of our query vectors is empty (a stopword) or fastembed's; most words are not stopwords."""
    ours, theirs = BM25Encoder(language=language), fastembed_model(tmp_path, language=language)
    words = SENTENCES[language].split()
    kept = 0
    for word, reference in zip(words, theirs.query_embed(words), strict=True):
        vector = ours.embed_query(word)
        if vector.indices:
            assert_same(vector, reference, word)
            kept += 1
    assert kept > len(words) / 2


def test_language_changes_stopwords_and_stems() -> None:
    english, german = BM25Encoder(), BM25Encoder(language="german")
    assert german.embed_query("und die Katzen") != english.embed_query("und die Katzen")
    assert german.embed_query("und die") == SparseVector([], [])
    assert set(supported_languages()) == set(SENTENCES) | {"english"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e: e.embed_documents(None), "sequence of str, got NoneType"),
        (lambda e: e.embed_documents("one text"), "sequence of str, got str"),
        (lambda e: e.embed_documents(["ok", 3, "ok"]), "text 1 is int"),
        (lambda e: e.embed_documents(["ok", None]), "text 1 is NoneType"),
        (lambda e: e.embed_documents([b"bytes"]), "text 0 is bytes"),
        (lambda e: e.embed_query(None), "query is NoneType"),
        (lambda e: e.embed_query(["a list"]), "query is list"),
    ],
)
def test_texts_that_are_not_strings(call: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        call(BM25Encoder())


def test_the_index_of_a_bad_text() -> None:
    with pytest.raises(InputError) as caught:
        BM25Encoder().embed_documents(["a", "b", 7])
    assert caught.value.index == 2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"language": "klingon"}, "'klingon' is not supported .*supported: arabic, .*english, .*turkish"),
        ({"language": "chinese"}, "'chinese' is not supported"),  # Qdrant Edge has it, fastembed does not
        ({"language": "English"}, "'English' is not supported"),
        ({"language": None}, "None is not supported"),
        ({"k": -0.1}, "k must be >= 0"),
        ({"k": float("nan")}, "k must be a finite number"),
        ({"k": "1.2"}, "k must be a finite number"),
        ({"b": 1.5}, r"b must be within \[0, 1\]"),
        ({"avg_len": 0}, "avg_len must be > 0"),
        ({"avg_len": True}, "avg_len must be a finite number"),
    ],
)
def test_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        BM25Encoder(**params)


def test_vectors_in_a_qdrant_edge_collection_with_the_idf_modifier(tmp_path: Path) -> None:
    """What the sinks will do with them: stored as a sparse vector with Modifier.Idf, an empty one included,
    and searched; the rarer shared term decides the ranking (IDF is Qdrant's half of BM25)."""
    import qdrant_edge as qe

    encoder = BM25Encoder()
    texts = [
        "Qdrant stores sparse vectors for hybrid search.",
        "Dense vectors and sparse vectors side by side.",
        "The and of to a in.",  # only stopwords: an empty vector
        "Sparse vectors again, and vectors, vectors.",
    ]
    config = qe.EdgeConfig(sparse_vectors={"bm25": qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)})
    shard = qe.EdgeShard.create(str(tmp_path / "shard"), config)
    try:
        vectors = encoder.embed_documents(texts)
        assert vectors[2] == SparseVector([], [])
        points = [qe.Point(i, {"bm25": qe.SparseVector(v.indices, v.values)}) for i, v in enumerate(vectors, start=1)]
        shard.update(qe.UpdateOperation.upsert_points(points))

        def search(text: str) -> list[int]:
            query = encoder.embed_query(text)
            request = qe.QueryRequest(
                limit=4, query=qe.Query.Nearest(qe.SparseVector(query.indices, query.values), using="bm25")
            )
            return [int(point.id) for point in shard.query(request)]

        assert search("hybrid vectors") == [1, 4, 2]  # "hybrid" is in one text only; "vectors" in three
        assert search("Dense VECTORS") == [2, 4, 1]
        assert search("the and of") == []  # an empty query matches nothing rather than failing
    finally:
        shard.close()
