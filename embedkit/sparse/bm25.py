"""BM25 sparse vectors as fastembed's `Qdrant/bm25` computes them, by Qdrant Edge's own BM25.

The vectors carry the term-frequency half of BM25 only; Qdrant multiplies in the inverse document frequency
at search time, so the collection's sparse vector must be created with `Modifier.IDF` (`modifier = "idf"`).
For a document d and each distinct stem t in it (fastembed's `Bm25`, and Qdrant's `Bm25`):

    index(t)  = |murmur3_32(t, seed 0)|                       (the stem's UTF-8 bytes, signed hash, absolute)
    value(t)  = tf(t) * (k + 1) / (tf(t) + k * (1 - b + b * |d| / avg_len))

with tf(t) the count of t in d and |d| the number of stems kept (after stopwords). A query gives weight 1.0
to each distinct stem. Defaults are fastembed's: k = 1.2, b = 0.75, avg_len = 256, English.

Which part computes what:
- Tokens are cut here, by fastembed's rule (`fastembed.sparse.bm25.Bm25` and its `SimpleTokenizer`, 0.9):
  every character that is not a word character (`\\w`: letters, digits, underscore) becomes a space, the
  text is lowercased, and runs of word characters are the tokens; a lone "_" and tokens over 40 characters
  are dropped. Qdrant's own word tokenizer differs: it splits `snake_case` names at the underscores, keeps
  combining marks inside words, and applies its length cap after stemming; on the docstrings of the standard
  library that changed about a third of the vectors (704 of 2344 documents and queries), so the tokens are
  made here, and the engine only splits them at the spaces put between them.
- Everything else is Qdrant Edge's `Bm25` (qdrant-edge-py, run with its whitespace tokenizer over the
  tokens above): stopwords (the language's list; English is NLTK's 179 words), the Snowball stemmer,
  the murmur3 token ids and the weights. Nothing is downloaded.

`tests/sparse/test_bm25.py` holds the vectors identical to fastembed's `SparseTextEmbedding("Qdrant/bm25")`
(same indices, values within 1e-6, documents and queries) on English text, and the stemming, token ids and
stopwords of the other languages equal to fastembed's word by word.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from itertools import pairwise
from typing import Any

import qdrant_edge as qe

from embedkit.errors import InputError
from embedkit.sparse.base import SparseVector

__all__ = ["BM25Encoder", "supported_languages"]

ENGINE = "qdrant-edge-py"
# fastembed's Bm25(token_max_length=40): a longer token (before stemming) is left out
MAX_TOKEN_CHARS = 40
# fastembed's two passes: remove_non_alphanumeric (before lowercasing), then SimpleTokenizer (after), whose
# "replace [^\w] by spaces and split" is the runs of word characters
_NOT_WORD_OR_SPACE = re.compile(r"[^\w\s]")
_WORD = re.compile(r"\w+")


def fastembed_tokens(text: str) -> list[str]:
    """`text` cut into lowercase tokens by fastembed's `Qdrant/bm25` rule (see the module docstring).

    Lowercasing sits between the two passes as in fastembed, which matters twice: "İ" lowercases to "i" plus a
    combining dot, which the second pass drops, and a capital sigma lowercases by what follows it (to the
    final form before a space, not before a full stop and a letter). The only token made of punctuation is
    "_" (category Pc, and a word character), which fastembed drops as punctuation.
    """
    words = _WORD.findall(_NOT_WORD_OR_SPACE.sub(" ", text).lower())
    return [word for word in words if word != "_" and len(word) <= MAX_TOKEN_CHARS]


def _engine_config(k: float, b: float, avg_len: float, language: str) -> qe.Bm25Config:
    # lowercase=False: the tokens come lowercased by Python's rules (fastembed's), not the engine's
    return qe.Bm25Config(
        k=k, b=b, avg_len=avg_len, language=language, tokenizer=qe.TokenizerType.Whitespace, lowercase=False
    )


# fastembed's Qdrant/bm25 languages (fastembed.sparse.bm25.supported_languages, 0.9) but Tamil, which Qdrant
# Edge has no stopword list for; the engine knows more (chinese, japanese, ...), which fastembed has no
# vectors to match, so they are left out rather than given vectors no other reader computes
FASTEMBED_LANGUAGES = (
    "arabic danish dutch english finnish french german greek hungarian italian norwegian portuguese romanian "
    "russian spanish swedish turkish"
).split()


@cache
def supported_languages() -> tuple[str, ...]:
    """The `language` values: fastembed's Qdrant/bm25 languages that the installed Qdrant Edge builds.

    English is checked against fastembed text by text; for the others the stemming and token ids, and the
    engine's stopword lists against NLTK's (which the Qdrant/bm25 files are) where a copy is installed
    (tests/sparse/test_bm25.py).
    """
    accepted = []
    for name in FASTEMBED_LANGUAGES:
        try:
            qe.Bm25(_engine_config(1.2, 0.75, 256.0, name))
        except ValueError:
            continue
        accepted.append(name)
    return tuple(accepted)


def _engine_version() -> str:
    try:
        return version(ENGINE)
    except PackageNotFoundError:  # a build of the module without its distribution metadata
        return "unknown"


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"BM25 {name} must be a finite number, got {value!r}")
    return float(value)


class BM25Encoder:
    """BM25 term-frequency vectors for a Qdrant sparse vector with the IDF modifier (see the module docstring).

    k: term-frequency saturation (>= 0, default 1.2); b: length normalisation in [0, 1] (default 0.75);
    avg_len: the expected document length in kept tokens (> 0, default 256); language: stopwords and stemmer
    (one of `supported_languages()`, default "english"). A bad value raises InputError naming it.

    The engine embeds one text per call; `embed_documents` loops over them, about 13,000 texts of 8..256 words
    per CPU second (half of it this module's tokenizing; fastembed: 6,800; all-MiniLM-L6-v2 on ONNX Runtime:
    31; benchmarks/hybrid.py, RESULTS.md). The encoder pickles (the engine is rebuilt
    from the parameters), so process pools and Ray workers can take it.
    """

    name = "bm25"
    modifier = "idf"

    def __init__(self, *, k: float = 1.2, b: float = 0.75, avg_len: float = 256.0, language: str = "english"):
        self.k = _number("k", k)
        self.b = _number("b", b)
        self.avg_len = _number("avg_len", avg_len)
        if self.k < 0:
            raise InputError(f"BM25 k must be >= 0, got {k!r}")
        if not 0.0 <= self.b <= 1.0:
            raise InputError(f"BM25 b must be within [0, 1], got {b!r}")
        if self.avg_len <= 0:
            raise InputError(f"BM25 avg_len must be > 0, got {avg_len!r}")
        if not isinstance(language, str) or language not in supported_languages():
            raise InputError(
                f"BM25 language {language!r} is not supported (fastembed's Qdrant/bm25 languages that "
                f"{ENGINE} {_engine_version()} has): supported: {', '.join(supported_languages())}"
            )
        self.language = language
        self._engine = self._build()

    def _build(self) -> qe.Bm25:
        try:
            return qe.Bm25(_engine_config(self.k, self.b, self.avg_len, self.language))
        except ValueError as error:  # checked above; a newer engine may refuse more
            raise InputError(f"{ENGINE} refused the BM25 parameters: {error}") from error

    def __getstate__(self) -> dict[str, Any]:
        return {"k": self.k, "b": self.b, "avg_len": self.avg_len, "language": self.language}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.k, self.b, self.avg_len, self.language = state["k"], state["b"], state["avg_len"], state["language"]
        self._engine = self._build()

    def __repr__(self) -> str:
        return f"BM25Encoder(k={self.k}, b={self.b}, avg_len={self.avg_len}, language={self.language!r})"

    def embed_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        """One vector per text, as stored: the TF weights above, indices ascending. A text with no token left
        (empty, punctuation, only stopwords) gives an empty vector. InputError names a text that is not a str."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InputError(f"embed_documents takes a sequence of str, got {type(texts).__name__}")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"text {index} is {type(text).__name__}, not str", index=index)
        return [self._vector(self._engine.embed_document(" ".join(fastembed_tokens(text)))) for text in texts]

    def embed_query(self, text: str) -> SparseVector:
        """The query vector: weight 1.0 for each distinct stem of `text` (Qdrant's IDF supplies the rest)."""
        if not isinstance(text, str):
            raise InputError(f"the query is {type(text).__name__}, not str")
        return self._vector(self._engine.embed_query(" ".join(fastembed_tokens(text))))

    def fingerprint(self) -> dict[str, Any]:
        """What decides the vectors: the parameters, the tokenizer rule and the engine that computes them."""
        return {
            "kind": "bm25",
            "k": self.k,
            "b": self.b,
            "avg_len": self.avg_len,
            "language": self.language,
            "tokenizer": f"fastembed-word-{MAX_TOKEN_CHARS}",
            "engine": ENGINE,
            "engine_version": _engine_version(),
        }

    @staticmethod
    def _vector(engine_vector: qe.SparseVector) -> SparseVector:
        indices, values = engine_vector.indices, engine_vector.values
        # the engine gives them ascending (0.9); the contract promises it, so it is checked, not assumed
        if any(a >= b for a, b in pairwise(indices)):
            pairs = sorted(zip(indices, values, strict=True))
            indices, values = [index for index, _ in pairs], [value for _, value in pairs]
        return SparseVector(indices=indices, values=values)
